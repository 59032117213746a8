"""The `shards` source: a split of a dataset that tools/make_dataset.py wrote.

`data_dir/dataset.json` lists each split's ArrayRecord shards and their counts; each
record is a bigvl record (bigvl/data/records.py). Image bytes come back exactly as they
were in the input files; the `decode` pp op decodes them.

`data_dir` may be a URL. ArrayRecord's reader opens `gs://` shards itself (random access
in place); shards under any other scheme (`s3://`, ...) are copied once to a local cache
directory (`cache_dir`, default ~/.cache/bigvl/shards) and read from there: the reader has
no client for those stores (docs/storage.md).
"""

from __future__ import annotations

import concurrent.futures
import json
import os

from bigvl import storage
from bigvl.data import records
from bigvl.registry import SOURCES

FORMAT = "bigvl-shards"
VERSION = 1
METADATA = "dataset.json"
_FIX = "run tools/make_dataset.py --out {d} (again, with the same arguments, to finish it)"
# Schemes ArrayRecord's C++ reader opens itself; shards under other URLs are copied locally.
NATIVE_SCHEMES = (None, "gs")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "bigvl", "shards")


def read_metadata(data_dir: str) -> dict:
  """The parsed `dataset.json` of `data_dir`, checked for format and version."""
  path = storage.join(data_dir, METADATA)
  if not storage.exists(path):
    if not storage.isdir(data_dir):
      raise FileNotFoundError(f"Dataset directory not found: {data_dir!r}. Create it with "
                              f"tools/make_dataset.py --out {data_dir} ...")
    raise FileNotFoundError(f"{path} not found: {data_dir!r} is not a finished bigvl dataset; "
                            + _FIX.format(d=data_dir) + ".")
  try:
    meta = json.loads(storage.read_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); " + _FIX.format(d=data_dir) + ".") from e
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}: format is {meta.get('format')!r}, not {FORMAT!r}; "
                     "it was not written by tools/make_dataset.py.")
  if meta.get("version") != VERSION:
    raise ValueError(f"{path}: version {meta.get('version')!r}; this bigvl reads version "
                     f"{VERSION}. Convert the data again or update bigvl.")
  return meta


@SOURCES.register("shards")
class ShardSource:
  """Random-access examples of one split of a bigvl shards dataset."""

  def __init__(self, data_dir: str, split: str = "train", cache_dir: str = ""):
    if not data_dir:
      raise ValueError("The 'shards' source has no data_dir: give the --out of "
                       "tools/make_dataset.py (a paper config takes it as its arg, e.g. "
                       "--config configs/siglip/b16.py:data_dir=gs://bucket/shards).")
    meta = read_metadata(data_dir)
    splits = meta.get("splits", {})
    if split not in splits:
      raise ValueError(f"{storage.join(data_dir, METADATA)} has no split {split!r}; it has "
                       f"{sorted(splits)}. Pick one, or convert it with tools/make_dataset.py "
                       f"--out {data_dir} --split {split} ...")
    info = splits[split]
    self.data_dir = data_dir
    self.split = split
    self._paths = [storage.join(data_dir, s["file"]) for s in info["shards"]]
    self._counts = [int(s["count"]) for s in info["shards"]]
    if sum(self._counts) != info["count"]:
      raise ValueError(f"{storage.join(data_dir, METADATA)}: split {split!r} says "
                       f"{info['count']} examples but its shards hold {sum(self._counts)}; "
                       + _FIX.format(d=data_dir) + ".")
    with concurrent.futures.ThreadPoolExecutor(min(16, len(self._paths) or 1)) as pool:
      found = list(pool.map(storage.isfile, self._paths))
    missing = [p for p, ok in zip(self._paths, found) if not ok]
    if missing:
      raise FileNotFoundError(f"Split {split!r} of {data_dir!r}: {len(missing)} shard files are "
                              f"missing, e.g. {missing[0]}; " + _FIX.format(d=data_dir) + ".")
    if storage.scheme(data_dir) not in NATIVE_SCHEMES:
      cache = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
      with concurrent.futures.ThreadPoolExecutor(min(8, len(self._paths) or 1)) as pool:
        self._paths = list(pool.map(lambda p: storage.local_copy(p, cache), self._paths))
    self.class_names = tuple(meta["class_names"]) if meta.get("class_names") else None
    self.features = meta.get("features", [])
    self._check_counts()  # Now, so that a changed shard fails at build time, not mid-training.
    self._source = None

  def _check_counts(self):
    from array_record.python.array_record_module import ArrayRecordReader

    def count(path):
      try:
        reader = ArrayRecordReader(path)
      except Exception as e:  # The C++ reader raises bare RuntimeErrors/ValueErrors.
        raise ValueError(f"Shard {path} is not a readable ArrayRecord file ({e}); "
                         + _FIX.format(d=self.data_dir) + ".") from e
      try:
        return reader.num_records()
      finally:
        reader.close()

    with concurrent.futures.ThreadPoolExecutor(min(16, len(self._paths) or 1)) as pool:
      for path, want, got in zip(self._paths, self._counts, pool.map(count, self._paths)):
        if got != want:
          raise ValueError(f"Shard {path} holds {got} records but dataset.json says {want}: it "
                           "was changed after conversion; " + _FIX.format(d=self.data_dir) + ".")

  def _reader(self):
    if self._source is None:
      import grain  # Only a reader needs it; importing bigvl stays light.
      # "path[0:n]" tells the data source the count, so it need not open every file to count.
      self._source = grain.sources.ArrayRecordDataSource(
          [f"{p}[0:{n}]" for p, n in zip(self._paths, self._counts) if n])
    return self._source

  def __getstate__(self):
    # Grain workers receive a pickled source; each opens its own readers on first access.
    state = self.__dict__.copy()
    state["_source"] = None
    return state

  def __len__(self) -> int:
    return sum(self._counts)

  def __getitem__(self, i: int) -> dict:
    i, n = int(i), len(self)
    if not -n <= i < n:
      raise IndexError(f"Index {i} out of range for {self!r}.")
    ex = records.decode(self._reader()[i % n])
    ex.pop("meta", None)  # Extras stay in the record; the canonical example has four fields.
    return ex

  def texts(self) -> list[str]:
    """Every caption of the split (for tokenizer training); reads record headers only."""
    reader, out = self._reader(), []
    for i in range(len(self)):
      header, _ = records.decode_header(reader[i])
      out += header["texts"]
    return out

  def __repr__(self):
    return f"ShardSource({self.data_dir!r}, split={self.split!r}, n={len(self)})"
