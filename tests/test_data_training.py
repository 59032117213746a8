"""Acceptance of the data layer end to end: converted datasets give the batches their
original files give, webdataset shards and folders with unreadable images train."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from bigvl import metrics, train
from bigvl.data import loader, tokenizer as tok_lib, transforms
from test_make_dataset import make_folder, make_webdataset, run

PP = ("decode|inception_crop(32)|flip_lr|value_range(-1, 1)|choose_text|tokenize|"
      "keep('image', 'text')")


@pytest.mark.unit
def test_folder_to_shards_to_batches_match_the_original_files(tmp_path):
  """Acceptance 1: JPEG/PNG files with captions -> make_dataset -> training batches equal
  the original files put through the same transforms with the same randomness."""
  images, captions, expected, _ = make_folder(tmp_path / "raw")
  code, log = run(["--out", tmp_path / "ds", "--images", images, "--captions", captions,
                   "--examples_per_shard", 7])
  assert code == 0, log
  tok = tok_lib.train([t for e in expected for t in e["texts"]], vocab_size=96)
  context = dict(tokenizer=tok, text_len=12)
  cfg = dict(name="shards", data_dir=str(tmp_path / "ds"), pp=PP)
  seed, batch_size = 3, 8
  ds = loader.train_dataset(cfg, batch_size=batch_size, seed=seed, context=context)
  stream = loader.Stream(cfg, seed=seed, context=context)
  pp = transforms.build(PP, tokenizer=tok, text_len=12)
  n = len(expected)
  for s in range(2 * n // batch_size + 1):  # Past the first epoch too.
    batch = ds[s].inputs
    assert batch["image"].shape == (batch_size, 32, 32, 3)
    for k in range(batch_size):
      j = s * batch_size + k
      _, ex = stream.examples[j]  # Which example the stream put here: its key.
      original = next(e for e in expected if e["key"] == ex["key"])
      with Image.open(os.path.join(images, original["key"])) as im:
        pixels = np.asarray(im.convert("RGB"))
      rng = np.random.default_rng((seed, j))
      want = pp({"image": pixels, "texts": original["texts"]}, rng)
      np.testing.assert_array_equal(batch["image"][k], want["image"])
      np.testing.assert_array_equal(batch["text"][k], want["text"])
      assert tok.decode(batch["text"][k]) in original["texts"]
  assert not any(ds[s].skipped.any() for s in range(3))


def _tiny_config(demo_config, train_cfg, steps, batch):
  config = demo_config(total_steps=steps, batch_size=batch, log_every=1, checkpoint_every=0)
  config.data.train = train_cfg
  config.data.text_len = 12
  config.model.text.max_len = 12
  return config


def _rows(workdir):
  return [r for r in metrics.read_jsonl(str(workdir / "metrics.jsonl")) if "train/loss" in r]


@pytest.mark.integration
@pytest.mark.slow
def test_webdataset_shards_convert_and_train(tmp_path, demo_config):
  """Acceptance 2: img2dataset-style tars -> make_dataset -> a SigLIP run that learns."""
  expected, _ = make_webdataset(tmp_path / "wds")
  code, log = run(["--out", tmp_path / "ds", "--webdataset", tmp_path / "wds"])
  assert code == 0, log
  pp = ("decode(1)|inception_crop(16, scale=(0.5, 1.0))|value_range(-1, 1)|choose_text|"
        "tokenize|keep('image', 'text')")
  config = _tiny_config(demo_config, dict(name="shards", data_dir=str(tmp_path / "ds"),
                                          pp=pp), steps=60, batch=8)
  config.data.vocab_size = 64
  train.train_and_evaluate(config, str(tmp_path / "wd"))
  rows = _rows(tmp_path / "wd")
  assert len(rows) == 60 and all(np.isfinite(r["train/loss"]) for r in rows)
  first = np.mean([r["train/loss"] for r in rows[:5]])
  last = np.mean([r["train/loss"] for r in rows[-5:]])
  assert last < 0.5 * first, (first, last)  # 14 image-caption pairs: it learns them.


@pytest.mark.integration
@pytest.mark.slow  # 44 s: a training run over 100 files.
def test_three_corrupt_files_of_100_train_and_are_reported(tmp_path, demo_config, capfd):
  """Acceptance 5: a folder source with 3 unreadable images of 100 trains one epoch;
  data/skipped reports 3 and the log names each file."""
  from data_sources import digit_image, png_bytes
  images = tmp_path / "images"
  images.mkdir()
  bad = {5: b"", 50: b"GIF89a truncated", 77: None}
  with open(tmp_path / "captions.jsonl", "w") as f:
    for i in range(100):
      name = f"{i:03d}.png"
      data = png_bytes(digit_image(i))
      if i in bad:
        data = bad[i] if bad[i] is not None else data[:len(data) // 2]  # Truncated PNG.
      (images / name).write_bytes(data)
      f.write(json.dumps({"image": name, "caption": f"digit {i % 10}"}) + "\n")
  pp = "decode(1)|value_range(-1, 1)|choose_text|tokenize|keep('image', 'text')"
  config = _tiny_config(demo_config, dict(name="folder", images_dir=str(images),
                                          captions_file=str(tmp_path / "captions.jsonl"), pp=pp),
                        steps=10, batch=10)
  config.data.vocab_size = 40
  train.train_and_evaluate(config, str(tmp_path / "wd"))
  rows = _rows(tmp_path / "wd")
  assert [r["data/skipped"] for r in rows][-1] == 3
  err = capfd.readouterr().err
  for name in ("005.png", "050.png", "077.png"):
    assert f"skipping unreadable example {name} (source folder" in err
