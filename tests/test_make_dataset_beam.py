"""tools/make_dataset.py --engine beam: the Beam pipeline writes what the single-machine path
writes, byte for byte, and resumes after a kill without writing finished shards again.

Inputs: the img2dataset-style tars of tests/test_make_dataset.py (real photos and digit
scans, one key group without an image per tar) plus a third tar holding an undecodable and
a truncated image; 20 key groups in all, so with 3 items a shard the boundaries fall inside
tars and shards span two tars.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from bigvl import storage
from bigvl.data import ingest, make_dataset_beam
from test_make_dataset import REPO, make_folder, make_webdataset, run

PER_SHARD = 3
BEAM = ["--engine", "beam", "--direct_num_workers", "2"]


def make_tars(root):
  """Three tars in `root` (20 key groups, 4 of them skipped); returns the --webdataset glob."""
  make_webdataset(root)  # 00000.tar, 00001.tar: 8 key groups each, one without an image.
  with tarfile.open(root / "00000.tar") as tar:
    members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
  jpg = next(v for k, v in members.items() if k.endswith(".jpg"))
  png = next(v for k, v in members.items() if k.endswith(".png"))
  with tarfile.open(root / "00002.tar", "w") as tar:
    def add(name, data=None):
      info = tarfile.TarInfo(name)
      if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        return
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    add("000020000.jpg", jpg)
    add("000020000.txt", b"a copied photo")
    add("extra")  # A directory member: not a key group.
    add("000020001.jpg", b"not an image at all")
    add("000020001.txt", b"garbage")
    add("000020002.jpg", jpg[:len(jpg) // 2])  # Truncated.
    add("000020003.png", png)
    add("000020003.cls", b"3")
  return str(root / "*.tar")


def shard_files(out):
  return sorted(f for f in os.listdir(out) if re.fullmatch(r"train-\d{5}\.array_record", f))


def assert_same_output(beam_out, local_out):
  """Every shard, train-skipped.txt and dataset.json of the two outputs are the same bytes."""
  assert shard_files(beam_out) == shard_files(local_out) != []
  for f in shard_files(local_out):
    assert (beam_out / f).read_bytes() == (local_out / f).read_bytes(), f
  for f in ("train-skipped.txt", "dataset.json"):
    assert (beam_out / f).read_bytes() == (local_out / f).read_bytes(), f
  assert json.loads((beam_out / "dataset.json").read_text()) == json.loads(
      (local_out / "dataset.json").read_text())
  # Nothing else in OUT but each engine's record; no temporary files left in Beam's.
  assert set(os.listdir(beam_out)) - {".train-beam"} == set(os.listdir(local_out)) - {
      ".train-progress.jsonl"}
  assert not [n for n in os.listdir(beam_out / ".train-beam") if ".tmp-" in n]


# ----------------------------------------------------------------------------- unit


@pytest.mark.unit
def test_plan_reads_exactly_the_items_of_each_shard(tmp_path):
  """The shard plan and the tar reading alone (no pipeline): shard k's items are items
  [k*S, (k+1)*S) of the single-machine reader, from one or two tars."""
  spec = make_tars(tmp_path)
  reader = ingest.read_webdataset(spec)
  job = make_dataset_beam.job_of(reader, str(tmp_path / "out"), "train", examples_per_shard=3,
                                 verify_images=True, workers=1)
  counts = [make_dataset_beam.count_groups(p) for p in job.tars]
  assert counts == [8, 8, 4]
  plan = make_dataset_beam.plan_shards(job, counts)
  assert [(s["start"], s["stop"]) for s in plan] == [(i, min(i + 3, 20)) for i in range(0, 20, 3)]
  assert [[(os.path.basename(p), a, b) for p, a, b in s["tars"]] for s in plan[2:4]] == [
      [("00000.tar", 6, 8), ("00001.tar", 0, 1)], [("00001.tar", 1, 4)]]
  items = list(reader.items())
  assert len(items) == 20
  for s in plan:
    got = list(make_dataset_beam.shard_items(job, s))
    want = items[s["start"]:s["stop"]]
    assert len(got) == len(want)
    for g, w in zip(got, want):
      if isinstance(w, ingest.Skipped):
        assert g == w  # Same key, same reason.
      else:
        assert set(g) == set(w) and g["key"] == w["key"] and g["image"] == w["image"]
        assert g["texts"] == w["texts"] and g.get("meta") == w.get("meta")
        assert g["label"] == w["label"] and g["label"].dtype == w["label"].dtype
  # A worker writes a shard once: given it again (a retried bundle, a rerun that counted the
  # tars again), it returns the recorded entry and leaves the file alone.
  os.makedirs(job.state)
  entry = make_dataset_beam.write_shard(plan[2], job)
  assert entry["file"] == "train-00002.array_record" and entry["items"] == 3
  assert [k for k, _ in entry["skipped"]] == ["000009999"] and entry["count"] == 2
  shard = tmp_path / "out" / "train-00002.array_record"
  first = (os.stat(shard).st_ino, os.stat(shard).st_mtime_ns)
  assert make_dataset_beam.write_shard(plan[2], job) == entry
  assert (os.stat(shard).st_ino, os.stat(shard).st_mtime_ns) == first
  assert os.listdir(job.state) == ["train-00002.json"]  # No temporary file left.
  # A tar cut inside a member is refused while counting, with the single-machine message.
  whole = (tmp_path / "00002.tar").read_bytes()
  (tmp_path / "cut.tar").write_bytes(whole[:1200])
  with pytest.raises(ValueError, match="Cannot read webdataset tar .*cut.tar"):
    make_dataset_beam.count_groups(str(tmp_path / "cut.tar"))


@pytest.mark.unit
def test_without_beam_the_local_engine_runs_and_beam_is_a_one_line_error(tmp_path, monkeypatch,
                                                                        capsys):
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # `import apache_beam` fails.
  images, captions, expected, _ = make_folder(tmp_path)
  args = ["--images", images, "--captions", captions]
  code, log = run(["--out", tmp_path / "local", *args])  # Never imports Beam.
  assert code == 0, log
  code, log = run(["--out", tmp_path / "beam", *args, "--engine", "beam"])
  assert code == 2
  assert log == "make_dataset: error: --engine beam needs Apache Beam: pip install 'bigvl[beam]'\n"
  # Without --engine beam an unknown flag is an error, as it always was.
  capsys.readouterr()
  code, _ = run(["--out", tmp_path / "x", *args, "--runner", "DirectRunner"])
  assert code == 2 and "unrecognized arguments: --runner DirectRunner" in capsys.readouterr().err


@pytest.mark.unit
def test_beam_refuses_to_mix_with_a_single_machine_conversion(tmp_path):
  images, captions, _, _ = make_folder(tmp_path)
  args = ["--images", images, "--captions", captions, "--examples_per_shard", 4]
  with pytest.raises(RuntimeError, match="stopped after 1 shards"):
    run(["--out", tmp_path / "out", *args], stop_after_shards=1)
  code, log = run(["--out", tmp_path / "out", *args, *BEAM])  # Refused before any pipeline.
  assert code == 2 and log.count("\n") == 1
  assert "single-machine conversion of split 'train'" in log and "without --engine beam" in log
  assert not (tmp_path / "out" / ".train-beam").exists()


@pytest.mark.unit
def test_bad_beam_options_are_refused_before_any_work(tmp_path):
  images, captions, _, _ = make_folder(tmp_path)
  args = ["--out", tmp_path / "out", "--images", images, "--captions", captions, *BEAM]
  for extra, why in ((["--exmaples_per_shard", 5], "unrecognized arguments: "
                                                   "--exmaples_per_shard 5 (neither"),
                     (["--direct_running_mode", "fast"], "bad Beam pipeline option: argument "
                                                         "--direct_running_mode: invalid choice")):
    code, log = run([*args, *extra])
    assert code == 2 and log.count("\n") == 1 and why in log, log
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.integration
def test_beam_webdataset_output_is_byte_identical(tmp_path):
  spec = make_tars(tmp_path / "wds")
  args = ["--webdataset", spec, "--examples_per_shard", PER_SHARD]
  code, log = run(["--out", tmp_path / "local", *args])
  assert code == 0, log
  code, log = run(["--out", tmp_path / "beam", *args, *BEAM])
  assert code == 0, log
  assert_same_output(tmp_path / "beam", tmp_path / "local")
  skipped = (tmp_path / "beam" / "train-skipped.txt").read_text().splitlines()
  assert [line.split("\t")[0] for line in skipped] == [
      "000009999", "000019999", "000020001", "000020002"]
  assert "undecodable image" in skipped[2] and "no image member" in skipped[0]
  # A line per finished shard, then the single-machine path's last line.
  # Two workers finish shards in either order: every shard once, the count reaching 7/7.
  done = re.findall(r"train-(\d{5})\.array_record written: (\d)/7 shards done", log)
  assert sorted(s for s, _ in done) == [f"{i:05d}" for i in range(7)], done
  assert sorted(int(n) for _, n in done) == list(range(1, 8)), done
  assert "skipped 000020001: undecodable image" in log
  assert "Wrote 16 examples of split 'train' in 7 shards" in log and "skipped 4" in log


@pytest.mark.integration
def test_beam_folder_output_is_byte_identical(tmp_path):
  images, captions, _, bad = make_folder(tmp_path, corrupt=3)
  args = ["--images", images, "--captions", captions, "--examples_per_shard", 6]
  assert run(["--out", tmp_path / "local", *args])[0] == 0
  code, log = run(["--out", tmp_path / "beam", *args, *BEAM])
  assert code == 0, log
  assert_same_output(tmp_path / "beam", tmp_path / "local")
  listed = (tmp_path / "beam" / "train-skipped.txt").read_text().splitlines()
  assert [line.split("\t")[0] for line in listed] == bad


KILLED_RUN = """
import sys
from bigvl.data import ingest, make_dataset_beam
make_dataset_beam.convert(ingest.read_webdataset(sys.argv[1]), sys.argv[2], "train",
                          examples_per_shard=int(sys.argv[3]), workers=1,
                          pipeline_args=["--direct_num_workers=2"], pause_s=1.5)
"""


@pytest.mark.integration
@pytest.mark.slow  # ~12 s each on 2 idle cores; the default suite stays short.
def test_beam_run_killed_resumes_without_rewriting_finished_shards(tmp_path):
  spec = make_tars(tmp_path / "wds")
  args = ["--webdataset", spec, "--examples_per_shard", PER_SHARD]
  assert run(["--out", tmp_path / "local", *args])[0] == 0
  out = tmp_path / "beam"
  state = out / ".train-beam"

  # Every worker pauses 1.5 s after each shard: killed (driver and workers) once 2 are done.
  with open(tmp_path / "killed.log", "wb") as err:  # A file: a full pipe would stall the run.
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, spec, str(out), str(PER_SHARD)],
                            cwd=REPO, start_new_session=True, stdout=err, stderr=err)
    deadline = time.monotonic() + 60
    done = []
    while time.monotonic() < deadline and proc.poll() is None:
      done = sorted(n for n in (os.listdir(state) if state.exists() else [])
                    if re.fullmatch(r"train-\d{5}\.json", n))
      if len(done) >= 2:
        break
      time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # The driver and its worker processes, at once.
    proc.wait(timeout=30)
  assert len(done) >= 2, (tmp_path / "killed.log").read_text()[-3000:]
  done = sorted(n for n in os.listdir(state) if re.fullmatch(r"train-\d{5}\.json", n))
  assert 2 <= len(done) < 7, done  # Killed part-way.
  assert not (out / "dataset.json").exists()
  finished = [n.replace(".json", ".array_record") for n in done]
  before = {f: (os.stat(out / f).st_ino, os.stat(out / f).st_mtime_ns) for f in finished}

  code, log = run(["--out", out, *args, *BEAM])  # The same command, through the CLI.
  assert code == 0, log
  assert f"{len(done)} shards of 7 already written; skipping them" in log
  assert {f: (os.stat(out / f).st_ino, os.stat(out / f).st_mtime_ns) for f in finished} == before
  assert len(re.findall(r"written: \d/7 shards done", log)) == 7 - len(done)
  assert_same_output(out, tmp_path / "local")

  # Other arguments are refused, in one line naming the difference and the fix.
  code, log = run(["--out", out, "--webdataset", spec, "--examples_per_shard", 4, *BEAM])
  assert code == 2 and log.count("\n") == 1
  assert "examples_per_shard: recorded 3, now 4" in log and ".train-beam/config.json" in log
  assert "Re-run with the recorded arguments" in log
  # So is the single-machine engine on a Beam conversion's output.
  code, log = run(["--out", out, *args])
  assert code == 2 and "already has split 'train'" in log
  # A finished conversion run again writes no shard and changes nothing.
  code, log = run(["--out", out, *args, *BEAM])
  assert code == 0 and "7 shards of 7 already written" in log and "shards done" not in log
  assert_same_output(out, tmp_path / "local")


@pytest.mark.integration
@pytest.mark.slow  # ~12 s each on 2 idle cores; the default suite stays short.
def test_beam_writes_the_same_files_into_a_gcs_bucket(tmp_path, gcs_server):
  """Tars in gs:// and --out gs://...: the workers read the tars from the bucket; shards are
  written to local temporary files and uploaded, the rest through bigvl.storage; the GCS
  emulator ends up with the single-machine path's bytes (dataset.json's `source` names the
  inputs, URLs here)."""
  spec = make_tars(tmp_path / "wds")
  local = tmp_path / "local"
  assert run(["--out", local, "--webdataset", spec, "--examples_per_shard", PER_SHARD])[0] == 0
  bucket = gcs_server.bucket()
  for name in os.listdir(tmp_path / "wds"):
    storage.copy_file(str(tmp_path / "wds" / name), storage.join(bucket, "raw", name))
  args = ["--webdataset", storage.join(bucket, "raw", "*.tar"), "--examples_per_shard",
          PER_SHARD]
  out = storage.join(bucket, "data", "ds")
  code, log = run(["--out", out, *args, *BEAM])
  assert code == 0, log
  names = sorted(n for n in os.listdir(local) if not n.startswith("."))
  assert storage.listdir(out) == sorted(names + [".train-beam"])
  for name in names:
    ours, theirs = storage.read_bytes(storage.join(out, name)), (local / name).read_bytes()
    if name == "dataset.json":
      ours, theirs = json.loads(ours), json.loads(theirs)
      ours.pop("source"), theirs.pop("source")
    assert ours == theirs, name
  code, log = run(["--out", out, *args, *BEAM])
  assert code == 0 and "7 shards of 7 already written" in log
