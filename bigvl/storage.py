"""One path layer for every file bigvl reads or writes: local paths and object-store URLs.

A path is a local path (`/data/run`, `run`) or a URL: `gs://bucket/key` (Google Cloud
Storage, through gcsfs) or `s3://bucket/key` (S3 and S3-compatible stores, through s3fs),
or any other scheme `etils.epath` serves. Local paths take the plain `os` calls, unchanged;
URLs go through `etils.epath`, the layer orbax, grain and TFDS use themselves, so a run's
files, its checkpoints and its data agree on what a URL means.

What is atomic where (docs/storage.md): `write` is atomic everywhere. Locally it writes a
temporary file and renames it; on an object store a rename is a copy plus a delete, not
atomic, but a single object upload is: readers see the old object or the new one. So on a
store `write` uploads the whole object in one request. A store has no append either:
`append_text` rewrites the object with the new text at its end (the caller keeps it small,
or batches). Directories do not exist on a store; `makedirs` is a no-op there and `isdir`
means "some object has this prefix".

Emulators: with `STORAGE_EMULATOR_HOST` set (the variable gcsfs and google-cloud-storage
read), `configure_emulators` points the other GCS clients bigvl uses at the same server:
tensorstore (orbax's arrays) and array_record's C++ reader (shards).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str) -> str | None:
  """The URL scheme of `path` ("gs", "s3", ...), or None for a local path (file:// too)."""
  m = _SCHEME.match(os.fspath(path))
  if not m or m.group(1).lower() == "file":
    return None
  return m.group(1).lower()


def is_remote(path: str) -> bool:
  """True for an object-store URL (gs://, s3://, ...), False for a local path."""
  return scheme(path) is not None


def _local(path: str) -> str:
  path = os.fspath(path)
  return path[len("file://"):] if path.startswith("file://") else path


def epath(path: str):
  """`path` as an `etils.epath.Path` (what orbax and grain take)."""
  from etils import epath as epath_lib
  return epath_lib.Path(_local(path) if not is_remote(path) else path)


def abspath(path: str) -> str:
  """An absolute local path (user and relative parts resolved); a URL unchanged."""
  path = os.fspath(path)
  if is_remote(path):
    return path.rstrip("/") if path.rstrip("/").count("/") > 2 else path
  return os.path.abspath(os.path.expanduser(_local(path)))


def join(base: str, *parts: str) -> str:
  """`base/part/...`: os.path.join locally, "/"-joined on a URL."""
  if not is_remote(base):
    return os.path.join(_local(base), *parts)
  out = os.fspath(base).rstrip("/")
  for p in parts:
    out = out + "/" + p.strip("/")
  return out


def dirname(path: str) -> str:
  """The parent of `path` (a URL's parent keeps its scheme and bucket)."""
  if not is_remote(path):
    return os.path.dirname(_local(path))
  head = os.fspath(path).rstrip("/")
  parent = head.rsplit("/", 1)[0]
  return parent if parent.count("/") >= 2 else head


def basename(path: str) -> str:
  """The last component of `path`."""
  return os.path.basename(os.fspath(path).rstrip("/"))


def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(_local(path))
  return epath(path).exists()


def isdir(path: str) -> bool:
  """A local directory, or a URL prefix that some object is under."""
  if not is_remote(path):
    return os.path.isdir(_local(path))
  return epath(path).is_dir()


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(_local(path))
  p = epath(path)
  return p.exists() and not p.is_dir()


def listdir(path: str) -> list[str]:
  """The names directly under `path` (files and sub-directories), sorted; [] if none."""
  if not is_remote(path):
    return sorted(os.listdir(_local(path))) if os.path.isdir(_local(path)) else []
  p = epath(path)
  if not p.is_dir():
    return []
  return sorted(c.name for c in p.iterdir())


def glob(pattern: str) -> list[str]:
  """Paths matching a glob `pattern` (its wildcards in the last components), sorted."""
  if not is_remote(pattern):
    import glob as glob_lib
    return sorted(glob_lib.glob(_local(pattern)))
  # Split at the first component with a wildcard: epath globs relative to a base.
  parts = os.fspath(pattern).split("/")
  first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?[") or
               i == len(parts) - 1)
  base = "/".join(parts[:first])
  return sorted(os.fspath(p) for p in epath(base).glob("/".join(parts[first:])))


def getsize(path: str) -> int:
  if not is_remote(path):
    return os.path.getsize(_local(path))
  return int(epath(path).stat().length)


def makedirs(path: str) -> None:
  """Creates the directory `path` and its parents locally; nothing on a store, which has
  no directories (an object's key is its whole path)."""
  if not is_remote(path):
    os.makedirs(_local(path), exist_ok=True)


def open_file(path: str, mode: str = "rb"):
  """A file object for reading (`rb`, `r`) or writing a whole file (`wb`, `w`).

  On a store a write is uploaded when the file closes, as one object."""
  if not is_remote(path):
    return open(_local(path), mode)
  return epath(path).open(mode)


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def write(path: str, data: bytes | str) -> None:
  """Writes `data` to `path` atomically: readers see the old content or the new, never a
  part, and a failed write leaves the old one.

  Locally: a temporary file of this writer's own (every process of a multi-host run may
  write the same file; a shared temporary name would be taken from under another writer)
  in the target's directory (a rename across file systems is not atomic), then a rename.
  On a store: one upload of the whole object, which the store makes visible at once.
  """
  raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
  if is_remote(path):
    epath(path).write_bytes(raw)
    return
  path = _local(path)
  tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    with open(tmp, "wb") as f:
      f.write(raw)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def append_text(path: str, text: str, *, fsync: bool = False) -> None:
  """Appends `text` to `path` (created if missing). Locally a plain append (with `fsync`,
  on disk before returning); on a store, where objects cannot be appended to, the object
  is rewritten whole with `text` at its end, which is atomic but costs its size."""
  if not is_remote(path):
    with open(_local(path), "a") as f:
      f.write(text)
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    return
  old = read_bytes(path) if exists(path) else b""
  write(path, old + text.encode("utf-8"))


def remove(path: str) -> None:
  """Removes the file `path`; nothing if it does not exist."""
  if not is_remote(path):
    if os.path.lexists(_local(path)):
      os.remove(_local(path))
    return
  p = epath(path)
  if p.exists():
    p.unlink()


def rmtree(path: str) -> None:
  """Removes `path` and everything under it; nothing if it does not exist."""
  if not is_remote(path):
    shutil.rmtree(_local(path), ignore_errors=True)
    return
  p = epath(path)
  if p.exists():
    p.rmtree()


def copy_file(src: str, dst: str) -> None:
  """Copies one file, between any two of local disk and stores (the copy is uploaded whole)."""
  if not is_remote(src) and not is_remote(dst):
    shutil.copyfile(_local(src), _local(dst))
    return
  with open_file(src, "rb") as f:
    write(dst, f.read())


def move(src: str, dst: str) -> None:
  """Moves the file or directory `src` to `dst`. Locally a rename; on a store every object
  is copied, then the originals deleted (so a crash midway leaves both, never neither)."""
  if not is_remote(src) and not is_remote(dst):
    shutil.move(_local(src), _local(dst))
    return
  if not isdir(src):
    copy_file(src, dst)
    remove(src)
    return
  for name in listdir(src):
    move(join(src, name), join(dst, name))
  rmtree(src)


def local_copy(path: str, cache_dir: str) -> str:
  """A local path holding the file `path`: `path` itself when local, else a copy in
  `cache_dir` (downloaded once; a finished copy is reused, named by the URL and the
  object's size, so an object replaced by one of another size is fetched again)."""
  if not is_remote(path):
    return _local(path)
  name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.fspath(path)) + f".{getsize(path)}"
  target = os.path.join(cache_dir, name)
  if not os.path.exists(target):
    os.makedirs(cache_dir, exist_ok=True)
    write(target, read_bytes(path))  # Atomic: a killed download leaves no half copy.
  return target


def configure_emulators(environ=None) -> None:
  """Points every GCS client at the emulator `STORAGE_EMULATOR_HOST` names, if set.

  gcsfs and google-cloud-storage read that variable; tensorstore (orbax) reads
  TENSORSTORE_GCS_HTTP_URL and array_record's C++ client CLOUD_STORAGE_EMULATOR_ENDPOINT.
  Each is set only when not set already. gcsfs's check of the bucket type (a gRPC call an
  emulator does not answer, 60 s per bucket) is turned off for an emulator.
  """
  env = os.environ if environ is None else environ
  host = env.get("STORAGE_EMULATOR_HOST")
  if not host:
    return
  url = host if "://" in host else "http://" + host
  env.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
  env.setdefault("CLOUD_STORAGE_EMULATOR_ENDPOINT", url)
  env.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def configure_listing_cache() -> None:
  """Turns off fsspec's cache of directory listings for the object stores.

  Other writers change a run's bucket behind this process's back (tensorstore writes the
  checkpoint arrays, other hosts write their files, a resumed run sees its predecessor's),
  and a cached listing would hide what they wrote: `exists` and `listdir` must ask the store.
  """
  try:
    import fsspec
  except ImportError:  # No fsspec, no store clients: nothing is cached.
    return
  for protocol in ("gs", "gcs", "s3", "s3a"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


configure_emulators()
configure_listing_cache()
