"""Shards read from object stores give the batches local disk gives: s3:// on moto's S3
server (copied to a local cache: ArrayRecord has no S3 client) and gs:// on the GCS
emulator (read in place by ArrayRecord's own GCS reader)."""

import os

import numpy as np
import pytest

from bigvl import metrics, storage, train
from bigvl.data import loader, tokenizer as tok_lib
from test_make_dataset import make_webdataset, run

pytestmark = pytest.mark.integration

PP = ("decode(1)|inception_crop(16, scale=(0.5, 1.0))|flip_lr|value_range(-1, 1)|choose_text|"
      "tokenize|keep('image', 'text')")


def _upload(local_dir, url):
  for name in os.listdir(local_dir):
    storage.copy_file(os.path.join(local_dir, name), storage.join(url, name))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cloud_data")
  expected, _ = make_webdataset(tmp / "wds")
  code, log = run(["--out", tmp / "ds", "--webdataset", tmp / "wds", "--examples_per_shard", 5])
  assert code == 0, log
  texts = [t for e in expected for t in e["texts"]]
  return str(tmp / "ds"), tok_lib.train(texts, vocab_size=64)


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_batches_from_a_bucket_equal_the_local_ones(request, store, dataset, tmp_path):
  local, tok = dataset
  bucket = request.getfixturevalue(f"{store}_server").bucket()
  url = storage.join(bucket, "data", "ds")
  _upload(local, url)
  context = dict(tokenizer=tok, text_len=12)
  cache = str(tmp_path / "cache")
  remote_cfg = dict(name="shards", data_dir=url, pp=PP, cache_dir=cache)
  local_cfg = dict(name="shards", data_dir=local, pp=PP)
  ours = loader.train_dataset(remote_cfg, batch_size=4, seed=7, context=context)
  theirs = loader.train_dataset(local_cfg, batch_size=4, seed=7, context=context)
  for step in range(8):  # 14 examples: past the first epoch.
    a, b = ours[step].inputs, theirs[step].inputs
    for k in b:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"step {step} {k}")
  # gs:// is read in place; s3:// through one local copy per shard.
  copies = os.listdir(cache) if os.path.isdir(cache) else []
  n_shards = len([f for f in os.listdir(local) if f.endswith(".array_record")])
  assert len(copies) == (n_shards if store == "s3" else 0), copies


@pytest.mark.slow
def test_training_on_s3_shards_logs_the_losses_of_local_shards(tmp_path, dataset, s3_server,
                                                               demo_config):
  local, _ = dataset
  url = storage.join(s3_server.bucket(), "ds")
  _upload(local, url)
  losses = {}
  for name, data_dir in (("local", local), ("s3", url)):
    config = demo_config(total_steps=6, batch_size=4, log_every=1, checkpoint_every=0)
    config.data.train = dict(name="shards", data_dir=data_dir, pp=PP,
                             cache_dir=str(tmp_path / "cache"))
    config.data.text_len = 12
    config.model.text.max_len = 12
    config.data.vocab_size = 64
    train.train_and_evaluate(config, str(tmp_path / name))
    losses[name] = [r["train/loss"] for r in metrics.read_jsonl(
        str(tmp_path / name / "metrics.jsonl")) if "train/loss" in r]
  assert len(losses["s3"]) == 6 and losses["s3"] == losses["local"]


def test_make_dataset_from_and_to_a_bucket_writes_the_local_bytes(tmp_path, gcs_server):
  """tools/make_dataset.py with webdataset tars in gs:// and --out gs://: the same shard
  files, skipped list and dataset.json as a local conversion; a rerun of a finished split
  writes nothing new."""
  make_webdataset(tmp_path / "wds")
  local = tmp_path / "ds"
  code, log = run(["--out", local, "--webdataset", tmp_path / "wds", "--examples_per_shard", 4])
  assert code == 0, log
  bucket = gcs_server.bucket()
  tars = storage.join(bucket, "raw")
  _upload(str(tmp_path / "wds"), tars)
  out = storage.join(bucket, "ds")
  code, log = run(["--out", out, "--webdataset", tars, "--examples_per_shard", 4])
  assert code == 0, log
  names = sorted(n for n in os.listdir(local) if not n.startswith("."))
  assert [n for n in storage.listdir(out) if not n.startswith(".")] == names
  for name in names:
    if name == "dataset.json":  # Names its inputs: the URLs here, local paths there.
      import json
      ours, theirs = (json.loads(storage.read_text(storage.join(out, name))),
                      json.loads((local / name).read_text()))
      ours.pop("source"), theirs.pop("source")
      assert ours == theirs
    else:
      assert storage.read_bytes(storage.join(out, name)) == (local / name).read_bytes(), name
  code, log = run(["--out", out, "--webdataset", tars, "--examples_per_shard", 4])
  assert code == 0 and "Wrote" in log, log
