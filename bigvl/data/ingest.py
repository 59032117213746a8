"""Readers of raw image-text inputs: an image folder with a captions file, or webdataset tars.

Every reader yields canonical examples (`key`, `image` as the file's bytes, never decoded,
`texts`, `label`) in a fixed order, so the same inputs always give the same sequence.
Images are not verified here; tools/make_dataset.py does that, and the `decode` pp op
catches the rest.

Captions file (JSONL, one object a line, or CSV/TSV with a header row). Columns:
  image path, relative to the images dir: `image`, `file`, `path` or `filename`;
  captions: `caption` or `text` (one string), or `captions` or `texts` (several: a JSON
    list in JSONL; in CSV a JSON list when the cell starts with "[", else split on "|");
  optional `label`: an integer, or a class name (any string that is not an integer),
    mapped to its index in the sorted class names (the reader's `class_names`);
  any other column is kept as the example's `meta`.
The example key is the image path as written in the row. Empty and whitespace captions are
dropped from `texts`. In a file with a caption column, a row left without a caption is one
make_dataset skips (`Row.no_caption`): "empty caption" when its value is there but empty
(an empty cell, "", [], only blanks), "no caption and no label" when it has neither; a row
with a label and no caption value is kept, a labelled example.

Webdataset tars (as img2dataset writes them): adjacent members `{key}.jpg` (or .jpeg,
.png, .webp), `{key}.txt` (the caption), `{key}.json` (kept as `meta`), optional
`{key}.cls` (an integer label). Other files next to the tars (`*_stats.json`, `*.parquet`)
are ignored. A group whose `.txt` is empty or whitespace is skipped ("empty caption"); when
the webdataset has captions (its first tar holds a `.txt` member, `has_captions`), so is a
group with neither `.txt` nor `.cls` ("no caption and no label").
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
import re
import tarfile
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from bigvl import storage
from bigvl.registry import SOURCES

IMAGE_COLUMNS = ("image", "file", "path", "filename")
TEXT_COLUMNS = ("caption", "text")
TEXTS_COLUMNS = ("captions", "texts")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_log = logging.getLogger(__name__)


class Skipped(NamedTuple):
  """An input item that gives no example: its key and why."""
  key: str
  reason: str


class Row(NamedTuple):
  """One row of a captions file; `line` is its 1-based line (for messages). `no_caption`:
  why the row gives no example to make_dataset (its captions are empty or missing, see
  the module doc), else None."""
  path: str
  texts: tuple[str, ...]
  label: int
  meta: dict
  line: int
  no_caption: str | None = None


class _Reader:
  """Iterating yields examples only; items the reader cannot use land in `skipped`."""

  total: int | None = None
  class_names: tuple[str, ...] | None = None

  def items(self, start: int = 0) -> Iterator[dict | Skipped]:
    raise NotImplementedError

  def __iter__(self) -> Iterator[dict]:
    self.skipped: list[Skipped] = []
    for item in self.items():
      if isinstance(item, Skipped):
        _log.warning("Skipping %s: %s", item.key, item.reason)
        self.skipped.append(item)
      else:
        yield item


# ----------------------------------------------------------------------------- folder


def _as_int(value) -> int | None:
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
    return int(value)
  return None


def _first_column(columns, names) -> str | None:
  return next((n for n in names if n in columns), None)


def _raw_rows(captions_file: str) -> tuple[list[tuple[int, dict]], bool]:
  """(line, row dict) of every row, and whether the file is CSV (cells are strings)."""
  ext = os.path.splitext(captions_file)[1].lower()
  with open(captions_file, encoding="utf-8-sig") as f:
    text = f.read()
  is_jsonl = ext in (".jsonl", ".ndjson", ".json") or (
      ext not in (".csv", ".tsv") and text.lstrip().startswith("{"))
  if is_jsonl:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{captions_file}:{n}: not a JSON object ({e}). A JSONL captions file "
                         "has one JSON object per line.") from e
      if not isinstance(obj, dict):
        raise ValueError(f"{captions_file}:{n}: a JSON {type(obj).__name__}, expected an object "
                         f"with an image column ({', '.join(IMAGE_COLUMNS)}).")
      rows.append((n, obj))
    return rows, False
  reader = csv.DictReader(text.splitlines(), delimiter="\t" if ext == ".tsv" else ",")
  reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
  # DictReader counts lines from 1 at the header, so row i is on line i + 1.
  return [(i + 2, row) for i, row in enumerate(reader)], True


def _usable(texts) -> tuple[str, ...]:
  """`texts` less the empty and whitespace ones, which no text op can use."""
  return tuple(t for t in texts if t.strip())


def _row_texts(value, column: str, is_csv: bool, where: str) -> tuple[str, ...]:
  if value is None or value == "":
    return ()
  if column in TEXT_COLUMNS:
    if not isinstance(value, str):
      raise ValueError(f"{where}: column {column!r} must be a string; use 'captions' for a list.")
    return _usable((value,))
  if is_csv and isinstance(value, str):
    if value.lstrip().startswith("["):
      try:
        value = json.loads(value)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: column {column!r} starts with '[' but is not a JSON list "
                         f"({e}).") from e
    else:
      return tuple(t.strip() for t in value.split("|") if t.strip())
  if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
    raise ValueError(f"{where}: column {column!r} must be a list of strings, got {value!r}.")
  return _usable(value)


def parse_captions(captions_file: str) -> tuple[list[Row], tuple[str, ...] | None]:
  """Rows of a captions file (JSONL or CSV), and the sorted class names when labels are names."""
  if not os.path.isfile(captions_file):
    raise FileNotFoundError(f"Captions file not found: {captions_file!r}. Pass a JSONL or CSV "
                            "file listing the images (--captions).")
  raw, is_csv = _raw_rows(captions_file)
  columns = set().union(*(r.keys() for _, r in raw)) if raw else set()
  image_col = _first_column(columns, IMAGE_COLUMNS)
  text_col = _first_column(columns, TEXT_COLUMNS + TEXTS_COLUMNS)
  has_label = "label" in columns
  if raw and image_col is None:
    raise ValueError(f"{captions_file}: no image column; found {sorted(columns)}. Name the "
                     f"column with the image path one of {', '.join(IMAGE_COLUMNS)}.")
  if raw and text_col is None and not has_label:
    raise ValueError(f"{captions_file}: no caption or label column; found {sorted(columns)}. "
                     f"Name captions one of {', '.join(TEXT_COLUMNS + TEXTS_COLUMNS)}, "
                     "or labels 'label'.")
  names = set()
  parsed = []
  for line, r in raw:
    where = f"{captions_file}:{line}"
    path = r.get(image_col)
    if not isinstance(path, str) or not path.strip():
      raise ValueError(f"{where}: no image path in column {image_col!r}.")
    texts = _row_texts(r.get(text_col), text_col, is_csv, where) if text_col else ()
    label = r.get("label") if has_label else None
    no_caption = None
    if text_col and not texts:
      if r.get(text_col) is not None:  # Present, every caption empty or whitespace.
        no_caption = f"empty caption (row on line {line})"
      elif label is None or label == "":  # Absent, and no label: nothing but the image.
        no_caption = f"no caption and no label (row on line {line})"
    if label is not None and label != "" and _as_int(label) is None:
      if not isinstance(label, str):
        raise ValueError(f"{where}: label {label!r} is neither an integer nor a class name.")
      names.add(label.strip())
    meta = {k: v for k, v in r.items() if k not in (image_col, text_col, "label") and k}
    parsed.append((path.strip(), texts, label, meta, line, no_caption))
  if names and any(_as_int(p[2]) is not None for p in parsed):
    raise ValueError(f"{captions_file}: the label column mixes integers and class names; use "
                     "one or the other.")
  class_names = tuple(sorted(names)) if names else None
  index = {n: i for i, n in enumerate(class_names or ())}
  rows = []
  for path, texts, label, meta, line, no_caption in parsed:
    if label is None or label == "":
      label = -1
    elif class_names:
      label = index[label.strip()]
    else:
      label = _as_int(label)
    rows.append(Row(path, texts, label, meta, line, no_caption))
  return rows, class_names


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


class FolderReader(_Reader):
  """The rows of `captions_file` over `images_dir`, in file order; see the module doc."""

  def __init__(self, images_dir: str, captions_file: str):
    if not os.path.isdir(images_dir):
      raise FileNotFoundError(f"Images directory not found: {images_dir!r} (--images).")
    self.images_dir = images_dir
    self.captions_file = captions_file
    self.rows, self.class_names = parse_captions(captions_file)
    self.total = len(self.rows)
    self.skipped: list[Skipped] = []
    self.description = f"folder images={os.path.abspath(images_dir)} " \
                       f"captions={os.path.abspath(captions_file)}"

  def signature(self) -> dict:
    """What identifies these inputs: a resumed conversion must see the same."""
    return {"kind": "folder", "images": os.path.abspath(self.images_dir),
            "captions": os.path.abspath(self.captions_file),
            "captions_sha256": _sha256(self.captions_file)}

  def items(self, start: int = 0) -> Iterator[dict | Skipped]:
    """Every row from row `start` on: an example, or Skipped when its file cannot be read
    or it has no usable caption (`Row.no_caption`)."""
    for row in self.rows[start:]:
      if row.no_caption:
        yield Skipped(row.path, row.no_caption)
        continue
      try:
        with open(os.path.join(self.images_dir, row.path), "rb") as f:
          data = f.read()
      except FileNotFoundError:
        yield Skipped(row.path, f"missing file (row on line {row.line})")
        continue
      except OSError as e:
        yield Skipped(row.path, f"cannot read file: {e}")
        continue
      ex = {"key": row.path, "image": data, "texts": row.texts, "label": np.int32(row.label)}
      if row.meta:
        ex["meta"] = row.meta
      yield ex


def read_folder(images_dir: str, captions_file: str) -> FolderReader:
  """Reader of an image folder and its captions file; iterate it for examples.

  Rows whose image file is missing are logged and skipped; after iterating, the reader's
  `skipped` lists them. `class_names` is set when labels are class names.
  """
  return FolderReader(images_dir, captions_file)


@SOURCES.register("folder")
class FolderSource:
  """Random access over the rows of a captions file; reads the image file of row i on access.

  `split` fills a `{split}` in `captions_file` ("/raw/pets/{split}.csv"); without one it
  only names the source.
  """

  def __init__(self, images_dir: str, captions_file: str, split: str | None = None):
    # Evaluators pass a split to every source; "{split}" in the path lets it pick the file.
    if split is not None and "{split}" in captions_file:
      captions_file = captions_file.replace("{split}", split)
    if not os.path.isdir(images_dir):
      raise FileNotFoundError(f"Images directory not found: {images_dir!r}. Set images_dir "
                              "of the 'folder' source.")
    self.split = split
    self.images_dir = images_dir
    self.captions_file = captions_file
    self._rows, self.class_names = parse_captions(captions_file)

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, i: int) -> dict:
    row = self._rows[i]
    path = os.path.join(self.images_dir, row.path)
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      raise FileNotFoundError(
          f"Image {path!r} (row on line {row.line} of {self.captions_file}) is missing. Fix the "
          "row, or convert with tools/make_dataset.py, which skips missing files.") from None
    return {"key": row.path, "image": data, "texts": row.texts, "label": np.int32(row.label)}

  def texts(self) -> list[str]:
    """Every caption (for tokenizer training)."""
    return [t for r in self._rows for t in r.texts]

  def __repr__(self):
    return f"FolderSource({self.captions_file!r}, n={len(self)})"


# ----------------------------------------------------------------------------- webdataset


def _expand_braces(spec: str) -> list[str]:
  # webdataset's shard notation: "shards/{00000..00009}.tar".
  m = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
  if not m:
    return [spec]
  lo, hi = m.group(1), m.group(2)
  out = []
  for i in range(int(lo), int(hi) + 1):
    out += _expand_braces(spec[:m.start()] + str(i).zfill(len(lo)) + spec[m.end():])
  return out


def expand_tar_paths(spec: str | Sequence[str]) -> list[str]:
  """Tar paths from a list, a comma-separated string, globs, `{00000..00009}` ranges, or dirs.

  A directory or glob keeps only its `.tar` files (img2dataset writes stats and parquet
  files beside them); an explicitly named file must exist. The result is sorted.
  """
  parts = [spec] if isinstance(spec, str) else list(spec)
  parts = [p.strip() for s in parts for p in s.split(",") if p.strip()]
  paths = []
  for part in parts:
    for item in _expand_braces(part):
      if storage.isdir(item):
        paths += storage.glob(storage.join(item, "*.tar"))
      elif glob.has_magic(item):
        paths += [p for p in storage.glob(item) if p.endswith(".tar") and storage.isfile(p)]
      elif storage.isfile(item):
        paths.append(item)
      else:
        raise FileNotFoundError(f"Webdataset shard not found: {item!r}. Pass existing .tar "
                                "files, a directory, or a glob such as 'shards/*.tar'.")
  if not paths:
    raise FileNotFoundError(f"No .tar files match {spec!r}. Pass the img2dataset output "
                            "directory or a glob such as 'shards/*.tar'.")
  return sorted(set(paths))


def split_member_name(name: str) -> tuple[str, str]:
  """(key, extension) of a tar member's name: the key runs up to the first dot of the
  basename (the webdataset convention); the extension is lower-cased."""
  if name.startswith("./"):
    name = name[2:]
  head, base = os.path.split(name)
  stem, dot, ext = base.partition(".")
  return (os.path.join(head, stem) if head else stem), ext.lower()


def group_example(key: str, files: dict[str, bytes], captioned: bool = False) -> dict | Skipped:
  """The example of one key group (`files`: extension -> member bytes), or Skipped.

  An empty or whitespace `.txt` is skipped ("empty caption"); so is, when `captioned` (the
  webdataset has captions, `has_captions`), a group with neither a `.txt` nor a `.cls`.
  """
  ext = next((e for e in IMAGE_EXTS if e in files), None)
  if ext is None:
    return Skipped(key, f"no image member ({'/'.join(IMAGE_EXTS)}); has {sorted(files) or 'none'}")
  ex = {"key": key, "image": files[ext], "texts": (), "label": np.int32(-1)}
  if "txt" in files:
    caption = files["txt"].decode("utf-8", errors="replace").strip()
    ex["texts"] = (caption,) if caption else ()
  if "cls" in files:
    label = _as_int(files["cls"].decode("utf-8", errors="replace"))
    if label is None:
      return Skipped(key, f"{key}.cls is not an integer: {files['cls'][:40]!r}")
    ex["label"] = np.int32(label)
  if "json" in files:
    try:
      ex["meta"] = json.loads(files["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      return Skipped(key, f"{key}.json is not valid JSON ({e})")
  if "txt" in files and not ex["texts"]:
    return Skipped(key, f"empty caption ({key}.txt is empty or whitespace)")
  if captioned and "txt" not in files and "cls" not in files:
    return Skipped(key, "no caption and no label (no .txt or .cls member; the webdataset has "
                        "captions)")
  return ex


def has_captions(tar_paths: Sequence[str]) -> bool:
  """Whether a webdataset has captions: its first tar (in sorted order) holds a `.txt`
  member. Reads that tar's member headers up to the first `.txt` (the data is seeked over
  where the file allows), so it costs a few headers for a captioned dataset and one tar's
  headers for one without captions."""
  if not tar_paths:
    return False
  path = sorted(tar_paths)[0]
  try:
    with storage.open_file(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
      for m in tar:
        if m.isfile() and split_member_name(m.name)[1] == "txt":
          return True
  except tarfile.TarError as e:
    raise ValueError(f"Cannot read webdataset tar {path!r}: {e}. It is truncated or not a "
                     "tar; re-download it or leave it out of --webdataset.") from e
  return False


class WebDatasetReader(_Reader):
  """Examples of webdataset tars, streamed in order: tars sorted, members as stored."""

  def __init__(self, tar_paths: str | Sequence[str]):
    self.paths = expand_tar_paths(tar_paths)
    self.total = None
    self.class_names = None
    self._captioned = None
    self.skipped: list[Skipped] = []
    self.description = f"webdataset {len(self.paths)} tars: " + ", ".join(
        storage.abspath(p) for p in self.paths[:3]) + (" ..." if len(self.paths) > 3 else "")

  @property
  def captioned(self) -> bool:
    """Whether these tars have captions (`has_captions`); read once, on first use."""
    if self._captioned is None:
      self._captioned = has_captions(self.paths)
    return self._captioned

  def signature(self) -> dict:
    """What identifies these inputs: a resumed conversion must see the same."""
    return {"kind": "webdataset",
            "tars": [[storage.abspath(p), storage.getsize(p)] for p in self.paths]}

  def items(self, start: int = 0) -> Iterator[dict | Skipped]:
    """Every key group from group `start` on: an example, or Skipped (e.g. no image).

    Groups before `start` are passed over without reading their data.
    """
    index, captioned = 0, self.captioned
    for path in self.paths:
      key, files = None, {}
      try:
        with storage.open_file(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
          for m in tar:
            if not m.isfile():
              continue
            k, ext = split_member_name(m.name)
            if k != key:
              if key is not None:
                if index >= start:
                  yield group_example(key, files, captioned)
                index += 1
              key, files = k, {}
            # Streaming: a member's data can only be read before moving past it.
            if index >= start and ext:
              files[ext] = tar.extractfile(m).read()
      except tarfile.TarError as e:
        raise ValueError(f"Cannot read webdataset tar {path!r}: {e}. It is truncated or not a "
                         "tar; re-download it or leave it out of --webdataset.") from e
      if key is not None:
        if index >= start:
          yield group_example(key, files, captioned)
        index += 1


def read_webdataset(tar_paths: str | Sequence[str]) -> WebDatasetReader:
  """Reader of webdataset tars (paths, globs or a directory); iterate it for examples.

  Keys without an image member are logged and skipped; after iterating, the reader's
  `skipped` lists them.
  """
  return WebDatasetReader(tar_paths)
