"""The bigvl record format: exact round trips, and clear errors on damaged records."""

import io
import struct

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from bigvl.data import records

pytestmark = pytest.mark.unit


def _jpeg(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).resize((48, 48)).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def test_encoded_image_round_trips_byte_for_byte():
  jpg = _jpeg(skdata.astronaut())
  ex = {"key": "imgs/astronaut.jpg", "image": jpg, "texts": ("an astronaut", "a portrait ✓"),
        "label": np.int32(3), "meta": {"url": "http://x/y.jpg", "width": 48, "exif": None}}
  out = records.decode(records.encode(ex))
  assert out["image"] == jpg and isinstance(out["image"], bytes)
  assert out["key"] == ex["key"] and out["texts"] == ex["texts"] and out["meta"] == ex["meta"]
  assert out["label"] == 3 and out["label"].dtype == np.int32
  header, _ = records.decode_header(records.encode(ex))
  assert header["image_format"] == "jpeg"
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(out["image"]))),
                                np.asarray(Image.open(io.BytesIO(jpg))))


def test_array_image_round_trips_with_its_shape():
  img = skdata.camera()[::16, ::8, None]  # (32, 64, 1)
  out = records.decode(records.encode({"key": "k", "image": img, "texts": (), "label": -1}))
  assert out["image"].dtype == np.uint8 and out["image"].shape == (32, 64, 1)
  np.testing.assert_array_equal(out["image"], img)
  assert out["texts"] == () and out["label"] == -1 and "meta" not in out


@pytest.mark.parametrize("data,fmt", [
    (b"\x89PNG\r\n\x1a\n....", "png"), (b"\xff\xd8\xff\xe0", "jpeg"),
    (b"RIFF\0\0\0\0WEBPVP8 ", "webp"), (b"garbage", "unknown")])
def test_sniff_format(data, fmt):
  assert records.sniff_format(data) == fmt


def test_damaged_records_name_the_problem():
  good = records.encode({"key": "k", "image": b"\xff\xd8\xffdata", "texts": ("t",), "label": 1})
  with pytest.raises(records.RecordError, match="shorter than the 4-byte header length"):
    records.decode(good[:3])
  with pytest.raises(records.RecordError, match="header length says .* but only"):
    records.decode(good[:20])
  with pytest.raises(records.RecordError, match="not UTF-8 JSON"):
    records.decode(struct.pack("<I", 4) + b"\xff{x}" + b"img")
  with pytest.raises(records.RecordError, match="lacks"):
    records.decode(struct.pack("<I", 2) + b"{}")
  pixels = np.zeros((4, 4, 3), np.uint8)
  raw = records.encode({"key": "k", "image": pixels, "texts": (), "label": 0})
  with pytest.raises(records.RecordError, match="do not fill image_shape"):
    records.decode(raw[:-5])


def test_bad_inputs_are_refused_with_the_key():
  with pytest.raises(TypeError, match="'k'.*float32"):
    records.encode({"key": "k", "image": np.zeros((2, 2, 3), np.float32), "texts": (), "label": 0})
  with pytest.raises(TypeError, match="'k'.*meta"):
    records.encode({"key": "k", "image": b"x", "texts": (), "label": 0, "meta": {"a": object()}})
