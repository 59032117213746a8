"""Files that several processes of one run write to the same workdir path."""

import multiprocessing
import os

import pytest

from bigvl import storage
from bigvl.data import digits, tokenizer as tok_lib


def _save_many(args):
  path, proto, n = args
  tok = tok_lib.Tokenizer(proto)
  for _ in range(n):
    tok.save(path)
  return True


@pytest.mark.integration
def test_processes_saving_the_same_tokenizer_at_once_all_succeed(tmp_path):
  # What every process of a multi-host run does on its first start with an empty
  # workdir. A shared temporary name fails here within a few hundred writes.
  tok = tok_lib.train(digits.Digits("train").texts()[:500], 64)
  path = str(tmp_path / "tokenizer.model")
  with multiprocessing.get_context("spawn").Pool(4) as pool:
    assert all(pool.map(_save_many, [(path, tok.sp.serialized_model_proto(), 300)] * 4))
  assert tok_lib.Tokenizer.load(path).vocab_size == tok.vocab_size
  assert os.listdir(tmp_path) == ["tokenizer.model"]


@pytest.mark.unit
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "f.json")
  storage.write(path, "old")

  class Boom:  # Not str or bytes: the write itself raises, after the temp file is opened.
    pass

  with pytest.raises(TypeError):
    storage.write(path, Boom())
  assert open(path).read() == "old"
  assert os.listdir(tmp_path) == ["f.json"]


@pytest.mark.unit
def test_paths_and_urls():
  from bigvl import storage
  assert storage.scheme("gs://b/k") == "gs" and storage.scheme("S3://b") == "s3"
  assert storage.scheme("/data/x") is None and storage.scheme("file:///data/x") is None
  assert not storage.is_remote("runs/a") and storage.is_remote("gs://b/run")
  assert storage.abspath("gs://b/run/") == "gs://b/run"
  assert storage.abspath("gs://b") == "gs://b"
  assert storage.abspath("file:///tmp/x") == "/tmp/x"
  assert storage.abspath("rel") == os.path.join(os.getcwd(), "rel")
  assert storage.join("gs://b/", "run", "/checkpoints/") == "gs://b/run/checkpoints"
  assert storage.dirname("gs://b/run/checkpoints") == "gs://b/run"
  assert storage.dirname("gs://b/run") == "gs://b"
  assert storage.basename("gs://b/run/") == "run"


@pytest.mark.unit
def test_emulator_host_points_every_gcs_client_at_it():
  from bigvl import storage
  env = {"STORAGE_EMULATOR_HOST": "127.0.0.1:9023"}
  storage.configure_emulators(env)
  assert env["TENSORSTORE_GCS_HTTP_URL"] == "http://127.0.0.1:9023"
  assert env["CLOUD_STORAGE_EMULATOR_ENDPOINT"] == "http://127.0.0.1:9023"
  assert env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
  env = {"STORAGE_EMULATOR_HOST": "http://h:1", "TENSORSTORE_GCS_HTTP_URL": "http://other:2"}
  storage.configure_emulators(env)
  assert env["TENSORSTORE_GCS_HTTP_URL"] == "http://other:2"  # A user's own setting stays.
  env = {}
  storage.configure_emulators(env)
  assert env == {}


@pytest.mark.unit
def test_local_append_and_move(tmp_path):
  from bigvl import storage
  path = str(tmp_path / "a" / "log.jsonl")
  storage.makedirs(storage.dirname(path))
  storage.append_text(path, "1\n", fsync=True)
  storage.append_text(path, "2\n")
  assert storage.read_text(path) == "1\n2\n"
  storage.move(str(tmp_path / "a"), str(tmp_path / "b"))
  assert storage.listdir(str(tmp_path)) == ["b"] and storage.isfile(str(tmp_path / "b" / "log.jsonl"))
  assert storage.listdir(str(tmp_path / "missing")) == []
