"""bigvl.storage against real object-store servers on 127.0.0.1 (GCS emulator, moto S3)."""

import json

import numpy as np
import pytest

from bigvl import storage

pytestmark = pytest.mark.integration


@pytest.fixture(params=["gcs", "s3"])
def bucket(request):
  server = request.getfixturevalue(f"{request.param}_server")
  return server.bucket()


def test_files_and_listing(bucket):
  base = storage.join(bucket, "run")
  assert not storage.exists(base) and storage.listdir(base) == []
  storage.write(storage.join(base, "config.json"), json.dumps({"a": 1}))
  storage.write(storage.join(base, "sub", "x.bin"), b"\x00\x01")
  assert storage.isdir(base) and storage.isdir(storage.join(base, "sub"))
  assert storage.isfile(storage.join(base, "config.json"))
  assert not storage.isfile(storage.join(base, "sub"))
  assert storage.listdir(base) == ["config.json", "sub"]
  assert json.loads(storage.read_text(storage.join(base, "config.json"))) == {"a": 1}
  assert storage.read_bytes(storage.join(base, "sub", "x.bin")) == b"\x00\x01"
  assert storage.getsize(storage.join(base, "sub", "x.bin")) == 2
  assert storage.glob(storage.join(base, "sub", "*.bin")) == [storage.join(base, "sub", "x.bin")]
  # Overwrite is whole: no trace of the old content.
  storage.write(storage.join(base, "config.json"), "{}")
  assert storage.read_text(storage.join(base, "config.json")) == "{}"


def test_append_rewrites_the_object(bucket):
  path = storage.join(bucket, "m.jsonl")
  for i in range(3):
    storage.append_text(path, f"{i}\n")
  assert storage.read_text(path) == "0\n1\n2\n"


def test_move_a_tree_and_remove(bucket):
  src, dst = storage.join(bucket, "checkpoints", "7"), storage.join(bucket, "aside", "7-1")
  storage.write(storage.join(src, "state", "a"), b"a")
  storage.write(storage.join(src, "b"), b"b")
  storage.move(src, dst)
  assert not storage.exists(src)
  assert storage.read_bytes(storage.join(dst, "state", "a")) == b"a"
  assert storage.read_bytes(storage.join(dst, "b")) == b"b"
  storage.rmtree(storage.join(bucket, "aside"))
  assert not storage.exists(dst)


def test_local_copy_is_made_once_and_refetched_when_the_object_changes(bucket, tmp_path):
  path = storage.join(bucket, "d", "s.bin")
  storage.write(path, b"12345")
  first = storage.local_copy(path, str(tmp_path))
  assert open(first, "rb").read() == b"12345"
  assert storage.local_copy(path, str(tmp_path)) == first
  storage.write(path, b"1234567")
  assert open(storage.local_copy(path, str(tmp_path)), "rb").read() == b"1234567"


def test_orbax_checkpoint_round_trip(gcs_server):
  import orbax.checkpoint as ocp
  bucket = gcs_server.bucket()
  directory = storage.join(bucket, "run", "checkpoints")
  mngr = ocp.CheckpointManager(storage.epath(directory), options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=False))
  tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.int32)}
  mngr.save(3, args=ocp.args.StandardSave(tree))
  mngr.wait_until_finished()
  assert mngr.all_steps() == [3]
  back = mngr.restore(3, args=ocp.args.StandardRestore(tree))
  np.testing.assert_array_equal(back["w"], tree["w"])
  np.testing.assert_array_equal(back["b"], tree["b"])
  mngr.close()


def test_a_workdir_orbax_cannot_checkpoint_into_is_refused_before_writing(s3_server):
  from bigvl import checkpoint
  bucket = s3_server.bucket()
  with pytest.raises(ValueError, match=r"writes checkpoints to local paths and gs:// only, not "
                     r"s3://\. Put the workdir on gs://"):
    checkpoint.Checkpointer(storage.join(bucket, "run"))
  assert storage.listdir(bucket) == []


def test_metrics_and_tensorboard_in_a_bucket_read_back(gcs_server, tmp_path):
  from tensorboard.backend.event_processing import event_file_loader
  from bigvl import metrics
  workdir = storage.join(gcs_server.bucket(), "run")
  writers = metrics.run_writers(workdir)
  for step in (1, 2, 3):
    writers.write(step, {"train/loss": 1.0 / step})
  writers.close()
  rows = metrics.read_jsonl(storage.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3]
  # A resumed run's writer goes on after the rows already in the object.
  again = metrics.run_writers(workdir)
  again.write(4, {"train/loss": 0.25})
  again.close()
  assert [r["step"] for r in metrics.read_jsonl(storage.join(workdir, "metrics.jsonl"))] == [
      1, 2, 3, 4]
  # The event files are what TensorBoard's own loader reads (the raw events, as written).
  tb = storage.join(workdir, "tensorboard")
  names = storage.listdir(tb)
  assert len(names) == 2 and all(n.startswith("events.out.tfevents.") for n in names)
  local = tmp_path / names[0]
  local.write_bytes(storage.read_bytes(storage.join(tb, names[0])))
  events = list(event_file_loader.LegacyEventFileLoader(str(local)).Load())
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
  assert scalars == [(1, "train/loss", 1.0), (2, "train/loss", 0.5),
                     (3, "train/loss", pytest.approx(1 / 3))]
