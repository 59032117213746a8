"""Checksums of a checkpoint's files: written once a save is complete, verified on restore.

A flipped bit in a checkpoint data file reads back without any error from orbax or
tensorstore (the arrays are simply wrong). So when a save of step N has been committed,
`write` records every file under `checkpoints/N/` with its size and CRC32C in
`checkpoints/N/checksums.json` (a file orbax ignores: its items are the sub-directories),
and `verify` checks them before a restore; a mismatch makes the checkpoint damaged (moved
aside, the previous one restored).

CRC32C (google-crc32c, the hardware instruction: about 11 GB/s here against zlib CRC32's 3.3)
detects every burst of up to 32 flipped bits; this is about bit rot and torn copies, not
tampering. Files of checkpoints that recorded zlib's CRC32 ("algorithm": "crc32", bigvl
before CRC32C) are verified with it. The files are read back right after the
save, from the page cache. In an object store the store keeps a CRC32C of each object and
its clients check it on download, so no sidecar is written there. A checkpoint without
the file (written by an older bigvl, or a kill between the commit and the sidecar) is
restored unverified.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import zlib

import google_crc32c

from bigvl import storage

FILE = "checksums.json"
ALGORITHM = "crc32c"
# How each recorded algorithm extends a running checksum by a chunk of bytes.
_EXTEND = {"crc32c": google_crc32c.extend, "crc32": lambda crc, chunk: zlib.crc32(chunk, crc)}
_CHUNK = 8 << 20


def checksum_of(path: str, algorithm: str = ALGORITHM) -> int:
  """The `algorithm` ("crc32c" or "crc32") checksum of the file at `path`."""
  extend = _EXTEND[algorithm]
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      crc = extend(crc, chunk)
  return crc


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != FILE:
        out.append(rel)
  return sorted(out)


def write(step_dir: str) -> str | None:
  """Writes `step_dir/checksums.json` for a committed local checkpoint; its path (None in
  an object store, whose objects carry their own checksums)."""
  if storage.is_remote(step_dir):
    return None
  rels = _files(step_dir)
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    crcs = list(pool.map(lambda r: checksum_of(os.path.join(step_dir, r)), rels))
  table = {rel: [os.path.getsize(os.path.join(step_dir, rel)), crc]
           for rel, crc in zip(rels, crcs)}
  path = os.path.join(step_dir, FILE)
  storage.write(path, json.dumps({"algorithm": ALGORITHM, "files": table}, indent=0))
  return path


def verify(step_dir: str, within: str | None = None) -> str | None:
  """None when every file listed in `step_dir/checksums.json` (only those under the
  sub-directory `within`, if given) has its size and checksum, or there is no such file; else
  what differs, for the damaged-checkpoint message."""
  path = storage.join(step_dir, FILE)
  if storage.is_remote(step_dir) or not os.path.exists(path):
    return None
  try:
    sidecar = json.loads(storage.read_text(path))
    table, algorithm = sidecar["files"], sidecar.get("algorithm", "crc32")
    if algorithm not in _EXTEND:
      raise ValueError(f"algorithm {algorithm!r}")
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    return f"{path} is unreadable ({type(e).__name__})"
  for rel, (size, crc) in sorted(table.items()):
    if within is not None and not rel.startswith(within.rstrip("/") + os.sep):
      continue
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      return f"{rel} is missing"
    if os.path.getsize(full) != size:
      return f"{rel} has {os.path.getsize(full)} bytes, {size} when saved"
    got = checksum_of(full, algorithm)
    if got != crc:
      return (f"{rel} does not match its checksum ({algorithm.upper()} {got:08x}, {crc:08x} "
              "when saved)")
  return None
