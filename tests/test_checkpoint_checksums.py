"""bigvl.checkpoint_checksums on a hand-made step directory: CRC32C by default, the older
zlib-CRC32 sidecars still verified, every kind of damage named."""

import json
import os
import zlib

import pytest

from bigvl import checkpoint_checksums as cc

pytestmark = pytest.mark.unit


def _step(tmp_path):
  d = tmp_path / "10"
  (d / "state").mkdir(parents=True)
  (d / "state" / "data.bin").write_bytes(bytes(range(256)) * 4096)   # 1 MiB.
  (d / "data").mkdir()
  (d / "data" / "process_0-of-1.json").write_text('{"step": 10}')
  return str(d)


def test_crc32c_known_value(tmp_path):
  p = tmp_path / "f"
  p.write_bytes(b"123456789")
  assert cc.checksum_of(str(p)) == 0xE3069283          # The CRC-32C check value.
  assert cc.checksum_of(str(p), "crc32") == zlib.crc32(b"123456789") == 0xCBF43926


def test_write_then_verify_and_every_damage_is_named(tmp_path):
  d = _step(tmp_path)
  sidecar = json.load(open(cc.write(d)))
  assert sidecar["algorithm"] == "crc32c" and set(sidecar["files"]) == {
      os.path.join("state", "data.bin"), os.path.join("data", "process_0-of-1.json")}
  assert cc.verify(d) is None
  big = os.path.join(d, "state", "data.bin")
  with open(big, "r+b") as f:       # One flipped bit.
    f.seek(12345)
    b = f.read(1)
    f.seek(12345)
    f.write(bytes([b[0] ^ 0x10]))
  assert "does not match its checksum (CRC32C" in cc.verify(d)
  assert cc.verify(d, within="data") is None            # Only the data/ files asked for.
  with open(big, "ab") as f:
    f.write(b"x")
  assert "has 1048577 bytes, 1048576 when saved" in cc.verify(d)
  os.remove(big)
  assert cc.verify(d) == os.path.join("state", "data.bin") + " is missing"


def test_an_older_crc32_sidecar_is_still_verified(tmp_path):
  d = _step(tmp_path)
  rels = [os.path.join("state", "data.bin"), os.path.join("data", "process_0-of-1.json")]
  table = {r: [os.path.getsize(os.path.join(d, r)), cc.checksum_of(os.path.join(d, r), "crc32")]
           for r in rels}
  with open(os.path.join(d, cc.FILE), "w") as f:
    json.dump({"algorithm": "crc32", "files": table}, f)
  assert cc.verify(d) is None
  with open(os.path.join(d, "data", "process_0-of-1.json"), "w") as f:
    f.write('{"step": 11}')
  assert "(CRC32 " in cc.verify(d)
  with open(os.path.join(d, cc.FILE), "w") as f:
    json.dump({"algorithm": "md5", "files": table}, f)
  assert "is unreadable" in cc.verify(d)
