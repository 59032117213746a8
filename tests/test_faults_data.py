"""Fault: bad data that passes (issue 18, item 7).

High-bit-depth images (16-bit PNG, 16-bit TIFF, 32-bit int, float) decode scaled to 0-255,
not clipped at 255 by PIL's convert(). An example without a usable caption is skipped when
converting (both engines, its key in `<split>-skipped.txt`) and, met at training time, is
replaced and counted like an unreadable image, never a `ValueError: high <= 0`.

Every expected value here is computed by hand from the pixels the test writes.
"""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from bigvl.data import ingest, interleaved, loader, transforms
from bigvl.data.shards import ShardSource
from test_make_dataset import run

pytestmark = pytest.mark.faults

# 16-bit samples and their 8-bit values round(v * 255 / 65535), by hand: v / 257 rounded.
# 128 / 257 = 0.498 -> 0, 129 / 257 = 0.502 -> 1, 32767 / 257 = 127.498 -> 127,
# 32768 / 257 = 127.502 -> 128, 65280 / 257 = 254.008 -> 254. Truncation (v >> 8) would give
# 0, 127, 128, 255 for 129, 32767, 32768, 65280; clipping (PIL's convert) 128, 255, 255, 255.
SAMPLES16 = [0, 128, 129, 257, 32767, 32768, 65280, 65535]
EXPECTED8 = [0, 0, 1, 1, 127, 128, 254, 255]


def _png(arr: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG")
  return buf.getvalue()


def _tiff(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="TIFF")
  return buf.getvalue()


def _image16() -> tuple[np.ndarray, np.ndarray]:
  """(uint16 (5, 256) image, its expected uint8 pixels): row 0 the samples above (padded
  with 0), rows 1-4 the gradient v = 257 * j, which maps to exactly j (mean 127.5)."""
  img = np.zeros((5, 256), np.uint16)
  want = np.zeros((5, 256), np.uint8)
  img[0, :8], want[0, :8] = SAMPLES16, EXPECTED8
  img[1:] = 257 * np.arange(256, dtype=np.uint16)
  want[1:] = np.arange(256, dtype=np.uint8)
  return img, want


def _decode(data: bytes, channels):
  return transforms.build(f"decode({channels})")({"key": "k", "image": data})["image"]


# ----------------------------------------------------------------------------- images


@pytest.mark.unit
def test_16bit_grey_png_decodes_scaled_exactly():
  img, want = _image16()
  data = _png(img)
  with Image.open(io.BytesIO(data)) as im:
    assert im.mode == "I;16"  # What PIL gives for a 16-bit grey PNG.
  grey = _decode(data, 1)
  assert grey.dtype == np.uint8 and grey.shape == (5, 256, 1)
  np.testing.assert_array_equal(grey[..., 0], want)
  assert grey[0, :8, 0].tolist() == EXPECTED8
  # The gradient rows hold 0..255 once each: mean 255 / 2 (PIL's convert gave 254.0).
  assert grey[1:].mean() == 127.5
  np.testing.assert_array_equal(_decode(data, 3), np.repeat(want[..., None], 3, axis=-1))
  np.testing.assert_array_equal(_decode(data, None)[..., 0], want)  # As stored: not wrapped.
  # inception_crop decodes bytes itself: it gives what it gives for the scaled pixels.
  crop = transforms.build("inception_crop(4, channels=1)")
  np.testing.assert_array_equal(crop({"key": "k", "image": data})["image"],
                                crop({"key": "k", "image": want[..., None]})["image"])


@pytest.mark.unit
def test_other_high_bit_depth_modes_decode_scaled():
  img, want = _image16()
  # 16-bit big-endian TIFF: mode I;16B.
  big = Image.frombytes("I;16B", (256, 5), img.astype(">u2").tobytes())
  data = _tiff(big)
  with Image.open(io.BytesIO(data)) as im:
    assert im.mode == "I;16B"
  np.testing.assert_array_equal(_decode(data, 1)[..., 0], want)
  # A 16-bit PGM (maxval 65535): PIL gives mode I, holding 16-bit values.
  pgm = b"P5 256 5 65535\n" + img.astype(">u2").tobytes()
  with Image.open(io.BytesIO(pgm)) as im:
    assert im.mode == "I"
  np.testing.assert_array_equal(_decode(pgm, 1)[..., 0], want)
  # A 32-bit int TIFF: v * 255 / (2**31 - 1); samples 0, 2**31 - 1, (2**31 - 1) / 255 * k.
  top = 2 ** 31 - 1
  i32 = np.array([[0, top, top // 255 * 100, top // 2, -7]], np.int32)
  data = _tiff(Image.fromarray(i32))
  with Image.open(io.BytesIO(data)) as im:
    assert im.mode == "I"
  # top // 255 * 100 = 842150400 -> 99.99999996 -> 100; top // 2 -> 127.4999... -> 127;
  # negatives -> 0.
  assert _decode(data, 1)[0, :, 0].tolist() == [0, 255, 100, 127, 0]
  # Float (mode F) from [0, 1]: 0.5 -> 127.5 -> 128 (half to even), 0.2 -> 51; clipped.
  f32 = np.array([[0.0, 1.0, 0.5, 0.2, 1.5, -0.25]], np.float32)
  data = _tiff(Image.fromarray(f32))
  with Image.open(io.BytesIO(data)) as im:
    assert im.mode == "F"
  assert _decode(data, 1)[0, :, 0].tolist() == [0, 255, 128, 51, 255, 0]
  assert _decode(data, 3).shape == (1, 6, 3)


@pytest.mark.unit
def test_16bit_png_converted_by_make_dataset_trains_on_the_right_pixels(tmp_path):
  """The reported case: a 16-bit PNG passes make_dataset's verification (it is a valid
  PNG) and its bytes are stored as they are; decoding the record gives the scaled pixels."""
  img, want = _image16()
  (tmp_path / "images").mkdir()
  (tmp_path / "images" / "deep.png").write_bytes(_png(img))
  (tmp_path / "c.jsonl").write_text(json.dumps({"image": "deep.png", "caption": "a ramp"}) + "\n")
  code, log = run(["--out", tmp_path / "out", "--images", tmp_path / "images",
                   "--captions", tmp_path / "c.jsonl"])
  assert code == 0, log
  ex = ShardSource(str(tmp_path / "out"))[0]
  pixels = transforms.build("decode")(ex)["image"]
  np.testing.assert_array_equal(pixels, np.repeat(want[..., None], 3, axis=-1))
  assert pixels[1:].mean() == 127.5  # Before: 254.0.


# ----------------------------------------------------------------------------- conversion


def _jpg() -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format="JPEG")
  return buf.getvalue()


def _folder(root):
  """An image folder and a JSONL file with a `captions` column: (images, captions, kept
  keys and their texts, skipped keys and their reasons)."""
  images = root / "images"
  images.mkdir(parents=True)
  rows = [
      {"image": "ok.jpg", "captions": ["a grey square"]},
      {"image": "empty.jpg", "captions": [""]},
      {"image": "blank.jpg", "captions": ["  ", "\t"]},
      {"image": "some.jpg", "captions": ["", "a square"]},  # Kept; the blank one dropped.
      {"image": "nothing.jpg"},  # No caption, no label: skipped.
      {"image": "labelled.jpg", "label": 3},  # No caption but a label: a labelled example.
      {"image": "none.jpg", "captions": []},
  ]
  for r in rows:
    (images / r["image"]).write_bytes(_jpg())
  with open(root / "captions.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  kept = [("ok.jpg", ("a grey square",)), ("some.jpg", ("a square",)), ("labelled.jpg", ())]
  skipped = [("empty.jpg", "empty caption (row on line 2)"),
             ("blank.jpg", "empty caption (row on line 3)"),
             ("nothing.jpg", "no caption and no label (row on line 5)"),
             ("none.jpg", "empty caption (row on line 7)")]
  return images, root / "captions.jsonl", kept, skipped


def _tars(root, captioned=True):
  """Two webdataset tars; (kept keys and texts, skipped keys and reasons). Without
  `captioned` no group has a .txt member (an image-only dataset)."""
  root.mkdir(parents=True)
  jpg = _jpg()
  groups = [
      ("a0", {"jpg": jpg, "txt": b"a grey square\n"}),
      ("a1", {"jpg": jpg, "txt": b""}),
      ("a2", {"jpg": jpg, "txt": b"  \n\t"}),
      ("a3", {"jpg": jpg, "json": b"{}"}),  # No .txt, no .cls, in a captioned dataset.
      ("b0", {"jpg": jpg, "cls": b"4"}),  # A labelled group: kept.
      ("b1", {"jpg": jpg, "txt": b"another square"}),
  ]
  if not captioned:
    groups = [(k, {e: v for e, v in files.items() if e != "txt"}) for k, files in groups]
  for name, part in (("00000.tar", groups[:4]), ("00001.tar", groups[4:])):
    with tarfile.open(root / name, "w") as tar:
      for key, files in part:
        for ext, data in files.items():
          info = tarfile.TarInfo(f"{key}.{ext}")
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  if not captioned:
    return [(k, ()) for k, _ in groups], []
  kept = [("a0", ("a grey square",)), ("b0", ()), ("b1", ("another square",))]
  skipped = [("a1", "empty caption (a1.txt is empty or whitespace)"),
             ("a2", "empty caption (a2.txt is empty or whitespace)"),
             ("a3", "no caption and no label (no .txt or .cls member; the webdataset has "
                    "captions)")]
  return kept, skipped


def _check_output(out, kept, skipped):
  src = ShardSource(str(out))
  assert [(src[i]["key"], src[i]["texts"]) for i in range(len(src))] == kept
  lines = (out / "train-skipped.txt").read_text().splitlines()
  assert [tuple(line.split("\t")) for line in lines] == skipped
  assert json.loads((out / "dataset.json").read_text())["splits"]["train"]["skipped"] == len(
      skipped)


@pytest.mark.unit
def test_folder_rows_without_a_usable_caption_are_skipped_with_their_keys(tmp_path):
  images, captions, kept, skipped = _folder(tmp_path / "raw")
  code, log = run(["--out", tmp_path / "out", "--images", images, "--captions", captions])
  assert code == 0, log
  _check_output(tmp_path / "out", kept, skipped)
  for key, reason in skipped:
    assert f"skipped {key}: {reason}" in log
  # CSV: an empty or whitespace caption cell is an empty caption, labelled or not.
  (tmp_path / "c.csv").write_text("filename,caption,label\nok.jpg,a square,1\n"
                                  "empty.jpg,,2\nblank.jpg,   ,\n")
  reader = ingest.read_folder(str(images), str(tmp_path / "c.csv"))
  assert [e["key"] for e in reader] == ["ok.jpg"]
  assert reader.skipped == [("empty.jpg", "empty caption (row on line 3)"),
                            ("blank.jpg", "empty caption (row on line 4)")]
  # A class-labelled folder (no caption column at all) converts as before: nothing skipped.
  (tmp_path / "labels.csv").write_text("filename,label\nok.jpg,cat\nempty.jpg,dog\n")
  code, log = run(["--out", tmp_path / "labels", "--images", images,
                   "--captions", tmp_path / "labels.csv"])
  assert code == 0, log
  _check_output(tmp_path / "labels", [("ok.jpg", ()), ("empty.jpg", ())], [])


@pytest.mark.unit
def test_webdataset_groups_without_a_usable_caption_are_skipped_with_their_keys(tmp_path):
  kept, skipped = _tars(tmp_path / "wds")
  code, log = run(["--out", tmp_path / "out", "--webdataset", tmp_path / "wds",
                   "--examples_per_shard", 2])
  assert code == 0, log
  _check_output(tmp_path / "out", kept, skipped)
  assert "Wrote 3 examples of split 'train' in 3 shards" in log and "skipped 3" in log
  # A webdataset without captions (no .txt anywhere) converts as before: nothing skipped.
  kept, skipped = _tars(tmp_path / "plain", captioned=False)
  assert not ingest.read_webdataset(str(tmp_path / "plain")).captioned
  code, log = run(["--out", tmp_path / "plain_out", "--webdataset", tmp_path / "plain"])
  assert code == 0, log
  _check_output(tmp_path / "plain_out", kept, [])


@pytest.mark.integration
def test_beam_engine_skips_the_same_examples_byte_for_byte(tmp_path):
  from test_make_dataset_beam import BEAM, assert_same_output
  _tars(tmp_path / "wds")
  images, captions, _, _ = _folder(tmp_path / "raw")
  for name, args in (("wds", ["--webdataset", tmp_path / "wds"]),
                     ("folder", ["--images", images, "--captions", captions])):
    args = [*args, "--examples_per_shard", 2]
    code, log = run(["--out", tmp_path / name / "local", *args])
    assert code == 0, log
    code, log = run(["--out", tmp_path / name / "beam", *args, *BEAM])
    assert code == 0, log
    assert_same_output(tmp_path / name / "beam", tmp_path / name / "local")
    assert "caption" in (tmp_path / name / "beam" / "train-skipped.txt").read_text()


# ----------------------------------------------------------------------------- training


class CaptionSource:
  """20 PNG examples with captions; those in `bad` have none usable: (), "", or blanks."""

  BAD = {3: (), 8: ("",), 15: ("  ", "\n")}

  def __init__(self, n: int = 20):
    self.n = n
    self.png = _png(np.full((4, 4, 3), 200, np.uint8))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    texts = self.BAD.get(i, (f"caption {i}",))
    return {"key": f"ex{i:02d}", "image": self.png, "texts": texts, "index": np.int64(i)}


class FakeTokenizer:
  """encode(text, length): the length of the stripped text, then zeros (no sentencepiece
  needed): 0 first for an empty caption."""

  def encode(self, text, length):
    ids = np.zeros((length,), np.int32)
    ids[0] = len(text.strip())
    return ids


PP = "decode|choose_text|tokenize|keep('image', 'text', 'index')"


@pytest.mark.unit
def test_examples_without_a_caption_are_skipped_counted_and_named_in_training(capfd):
  cfg = dict(name="test_faults_data:CaptionSource", pp=PP)
  context = dict(tokenizer=FakeTokenizer(), text_len=4)
  ds = loader.train_dataset(cfg, batch_size=5, seed=0, context=context)
  batches = [ds[s] for s in range(4)]  # Exactly one epoch.
  # LoaderBatch.skipped is what the train step sums into data/skipped (bigvl/step.py).
  assert sum(int(b.skipped.sum()) for b in batches) == 3
  for b in batches:
    assert not set(b.inputs["index"].tolist()) & set(CaptionSource.BAD)
    assert (b.inputs["text"][:, 0] > 0).all()  # No empty caption was tokenized.
  err = capfd.readouterr().err
  assert "high <= 0" not in err
  for key in ("ex03", "ex08", "ex15"):
    assert f"skipping unusable example {key} (source test_faults_data:CaptionSource" in err
    assert f"no usable caption in 'texts' of example '{key}'" in err
  with pytest.raises(loader.DataError, match="Unusable example ex(03|08|15).*no usable caption"):
    strict = loader.train_dataset(cfg, batch_size=5, seed=0, context=context, on_corrupt="error")
    [strict[s] for s in range(4)]
  # A blank caption among usable ones is never chosen; evaluating, the first usable one.
  pick = transforms.build("choose_text")
  rng = np.random.default_rng(0)
  assert {pick({"texts": ("", "a", " ")}, rng)["text"] for _ in range(20)} == {"a"}
  assert pick({"texts": (" ", "b", "c")}, None)["text"] == "b"
  # tokenize of an empty string and interleave_text of a record with a captionless example
  # raise the same error, which the loader skips.
  tok = transforms.build("tokenize", tokenizer=FakeTokenizer(), text_len=4)
  with pytest.raises(transforms.MissingText, match="'text' of example 'k'"):
    tok({"key": "k", "text": "  "})
  with pytest.raises(transforms.MissingText, match="example 1"):
    interleaved.interleave_text()({"texts": [("a",), ()]}, None)
