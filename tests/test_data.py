"""Digits source, pp specs, tokenizer and the deterministic grain stream."""

import numpy as np
import pytest

from bigvl.data import digits, loader, sources, tokenizer as tok_lib, transforms

pytestmark = pytest.mark.unit

PP = "resize(16)|random_crop(16, pad=2)|value_range(-1, 1)|choose_text|tokenize|keep('image', 'text')"


@pytest.fixture(scope="module")
def tok():
  return tok_lib.train(digits.Digits("train").texts(), vocab_size=96)


def test_digits_split_is_deterministic_and_disjoint():
  train, test = digits.Digits("train"), digits.Digits("test")
  assert (len(train), len(test)) == (1437, 360)
  ex = test[0]
  assert ex["image"].shape == (8, 8, 1) and ex["image"].dtype == np.uint8
  assert ex["texts"][0] == f"a photo of the digit {digits.CLASS_NAMES[int(ex['label'])]}."
  assert set(np.bincount([int(test[i]["label"]) for i in range(len(test))])) > {30}
  with pytest.raises(ValueError, match="Unknown digits split 'val'"):
    digits.Digits("val")


def test_tokenizer_roundtrip_and_padding(tok):
  ids = tok.encode(["a photo of the digit seven.", "the number one."], 16)
  assert ids.shape == (2, 16) and ids.dtype == np.int32
  assert tok.decode(ids[0]) == "a photo of the digit seven."
  n = list(ids[1]).index(tok.eos_id)
  assert (ids[1, n + 1:] == tok.pad_id).all()
  cut = tok.encode("a photo of the digit seven.", 4)
  assert cut[-1] == tok.eos_id  # Truncated texts still end in EOS.
  again = tok_lib.train(digits.Digits("train").texts(), vocab_size=96)
  assert (again.encode(["the number two."], 8) == tok.encode(["the number two."], 8)).all()


def test_pp_spec_parse_and_errors(tok):
  pp = transforms.build(PP, tokenizer=tok, text_len=12)
  out = pp(digits.Digits("test")[3], np.random.default_rng(0))
  assert set(out) == {"image", "text"}
  assert out["image"].shape == (16, 16, 1) and out["text"].shape == (12,)
  assert -1.0 <= out["image"].min() and out["image"].max() <= 1.0
  with pytest.raises(ValueError, match="Unknown preprocessing op 'resise'.*'resize'"):
    transforms.build("resise(16)")
  with pytest.raises(ValueError, match="Unknown option 'sz' for pp op 'resize'"):
    transforms.build("resize(sz=16)")


def test_resize_bilinear_matches_known_values():
  img = np.array([[0, 10], [20, 30]], np.float32)[..., None]
  out = transforms.resize_bilinear(img, 4, 4)[..., 0]
  # Half-pixel centres: the corners keep the input values, the middle interpolates.
  assert out[0, 0] == 0 and out[3, 3] == 30
  np.testing.assert_allclose(out[1, 1], 7.5)
  np.testing.assert_allclose(out[1:3, 1:3].mean(), 15.0)


def test_stream_is_a_function_of_seed_and_step(tok):
  cfg = dict(name="digits", split="train", pp=PP)
  ctx = dict(tokenizer=tok, text_len=16)
  a = loader.train_dataset(cfg, batch_size=8, seed=3, context=ctx)
  b = loader.train_dataset(cfg, batch_size=8, seed=3, context=ctx)
  c = loader.train_dataset(cfg, batch_size=8, seed=4, context=ctx)
  for s in (0, 5, 400):  # 400 * 8 > 1437: later epochs too.
    np.testing.assert_array_equal(a[s].inputs["image"], b[s].inputs["image"])
    np.testing.assert_array_equal(a[s].inputs["text"], b[s].inputs["text"])
  assert not np.array_equal(a[0].inputs["image"], c[0].inputs["image"])
  it = loader.train_iterator(cfg, batch_size=8, seed=3, start_step=5, context=ctx)
  np.testing.assert_array_equal(next(it).inputs["image"], a[5].inputs["image"])


def test_two_processes_split_every_global_batch(tok):
  cfg = dict(name="digits", split="train", pp="choose_text|tokenize|keep('image', 'text')")
  ctx = dict(tokenizer=tok, text_len=16)
  whole = loader.train_dataset(cfg, batch_size=8, seed=1, context=ctx)
  parts = [loader.train_dataset(cfg, batch_size=8, seed=1, context=ctx, process_index=p,
                                process_count=2) for p in range(2)]
  for s in (0, 3):
    got = np.concatenate([parts[0][s].inputs["image"], parts[1][s].inputs["image"]])
    want = whole[s].inputs["image"]
    assert sorted(map(bytes, got)) == sorted(map(bytes, want))


def test_eval_batches_pad_and_mask():
  src = digits.Digits("test")
  pp = transforms.build("value_range(0, 1)|keep('image', 'label')")
  batches = list(loader.eval_batches(src, pp, 100))
  assert len(batches) == 4 and batches[-1]["_mask"].sum() == 60
  labels = np.concatenate([b["label"][b["_mask"]] for b in batches])
  assert len(labels) == 360


def test_unknown_source():
  with pytest.raises(ValueError, match="Unknown data source 'digit'.*'digits'"):
    sources.build(dict(name="digit", split="train"))
