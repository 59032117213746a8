"""The bigvl record: one example as bytes, the unit stored in bigvl's ArrayRecord shards.

Layout: a 4-byte little-endian header length N, N bytes of UTF-8 JSON header, then the
image bytes. The header holds `key`, `texts` (list), `label` (int), `image_format` and,
when the example had them, `meta` (JSON-able extras such as img2dataset's json) and
`image_shape` (for a decoded uint8 array, whose raw pixels are the image bytes).

An encoded image (JPEG, PNG, ...) is stored exactly as read and comes back as the same
bytes, so decoding a record's image gives the pixels of the original file.
"""

from __future__ import annotations

import json
import struct

import numpy as np

_LEN = struct.Struct("<I")
RAW_FORMAT = "uint8_array"  # `image_format` of a decoded array stored as raw pixels.

# Magic prefixes of the formats PIL decodes; anything else is "unknown" (still stored).
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


class RecordError(ValueError):
  """A record that is not a valid bigvl record (truncated or garbled)."""


def sniff_format(data: bytes) -> str:
  """The image format named by the magic bytes of `data`: "jpeg", "png", ... or "unknown"."""
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return "webp"
  for magic, name in _MAGIC:
    if data.startswith(magic):
      return name
  return "unknown"


def encode(example: dict) -> bytes:
  """Serializes a canonical example (`key`, `image`, `texts`, `label`, optional `meta`)."""
  image = example.get("image")
  header = {
      "key": str(example.get("key", "")),
      "texts": [str(t) for t in example.get("texts", ())],
      "label": int(example.get("label", -1)),
  }
  if isinstance(image, (bytes, bytearray, memoryview)):
    payload = bytes(image)
    header["image_format"] = sniff_format(payload)
  elif isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise TypeError(f"Example {header['key']!r}: image array has dtype {image.dtype}; "
                      "records store uint8 pixels or encoded bytes. Convert it first.")
    payload = np.ascontiguousarray(image).tobytes()
    header["image_format"] = RAW_FORMAT
    header["image_shape"] = list(image.shape)
  else:
    raise TypeError(f"Example {header['key']!r}: image is {type(image).__name__}; "
                    "expected encoded bytes or a uint8 numpy array.")
  meta = example.get("meta")
  if meta:
    header["meta"] = meta
  try:
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
  except TypeError as e:
    raise TypeError(f"Example {header['key']!r}: meta is not JSON-serializable ({e}).") from e
  return _LEN.pack(len(head)) + head + payload


def decode_header(record: bytes) -> tuple[dict, int]:
  """The JSON header of `record` and the offset where its image bytes start."""
  if len(record) < _LEN.size:
    raise RecordError(f"Truncated bigvl record: {len(record)} bytes, shorter than the "
                      f"{_LEN.size}-byte header length.")
  (n,) = _LEN.unpack_from(record)
  end = _LEN.size + n
  if end > len(record):
    raise RecordError(f"Truncated or garbled bigvl record: header length says {n} bytes "
                      f"but only {len(record) - _LEN.size} follow.")
  try:
    header = json.loads(bytes(record[_LEN.size:end]).decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RecordError(f"Garbled bigvl record: its {n}-byte header is not UTF-8 JSON ({e}).") from e
  if not isinstance(header, dict):
    raise RecordError(f"Garbled bigvl record: header is a JSON {type(header).__name__}, "
                      "not an object.")
  missing = [k for k in ("key", "texts", "label", "image_format") if k not in header]
  if missing:
    raise RecordError(f"Garbled bigvl record: header lacks {missing}; has {sorted(header)}.")
  return header, end


def decode(record: bytes) -> dict:
  """Parses a record into `key`, `image`, `texts` (tuple), `label` (int32) and `meta` if stored."""
  header, start = decode_header(record)
  payload = bytes(record[start:])
  if header["image_format"] == RAW_FORMAT:
    shape = tuple(header.get("image_shape") or ())
    if not shape or int(np.prod(shape)) != len(payload):
      raise RecordError(f"Garbled bigvl record {header['key']!r}: {len(payload)} pixel bytes "
                        f"do not fill image_shape {list(shape)}.")
    image = np.frombuffer(payload, np.uint8).reshape(shape).copy()
  else:
    image = payload
  out = {"key": header["key"], "image": image, "texts": tuple(header["texts"]),
         "label": np.int32(header["label"])}
  if "meta" in header:
    out["meta"] = header["meta"]
  return out
