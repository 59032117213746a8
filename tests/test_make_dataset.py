"""tools/make_dataset.py and the sources it feeds: folder and webdataset inputs -> shards.

Inputs are real photos (scikit-image) and real digit scans (scikit-learn), written as
JPEG and PNG files the way users and img2dataset lay them out.
"""

import csv
import functools
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from bigvl.data import ingest, make_dataset, records, sources
from bigvl.data.shards import ShardSource

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "cat", "coins", "colorwheel")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@functools.cache
def _photos() -> dict:
  from skimage import data as skdata
  out = {}
  for name in PHOTOS:
    img = Image.fromarray(getattr(skdata, name)())
    img.thumbnail((64, 64))  # Small: the tests time decoding, not photography.
    out[name] = np.asarray(img)
  return out


@functools.cache
def _digits():
  from sklearn.datasets import load_digits
  d = load_digits()
  imgs = np.clip(d.images[:12] * 16, 0, 255).astype(np.uint8)
  return [np.kron(im, np.ones((3, 3), np.uint8)) for im in imgs], [int(t) for t in d.target[:12]]


def _encode(img: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format=fmt)
  return buf.getvalue()


def _write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def make_folder(root, fmt="jsonl", corrupt=0):
  """An image folder and captions file; returns (images_dir, captions, expected examples)."""
  images = os.path.join(root, "images")
  rows, expected = [], []
  for name, img in _photos().items():
    key = f"photos/{name}.jpg"
    data = _encode(img, "JPEG")
    _write(os.path.join(images, key), data)
    rows.append({"image": key, "texts": [f"a photo of {name}", f"{name}, scikit-image"],
                 "label": "photo", "origin": "skimage"})
  for i, (img, target) in enumerate(zip(*_digits())):
    key = f"digits/{i:03d}.png"
    data = _encode(img, "PNG")
    _write(os.path.join(images, key), data)
    rows.append({"image": key, "texts": [f"a handwritten {WORDS[target]}"],
                 "label": WORDS[target], "origin": "sklearn"})
  names = sorted({r["label"] for r in rows})
  for r in rows:
    with open(os.path.join(images, r["image"]), "rb") as f:
      expected.append({"key": r["image"], "image": f.read(), "texts": tuple(r["texts"]),
                       "label": names.index(r["label"])})
  bad = []
  if corrupt:
    # Garbage, a JPEG cut in half, and a PNG whose pixel data is overwritten.
    jpg = _encode(_photos()["coffee"], "JPEG")
    png = bytearray(_encode(_photos()["chelsea"], "PNG"))
    png[60:-20] = b"\0" * (len(png) - 80)
    damaged = [b"this is not an image at all", jpg[:len(jpg) // 2], bytes(png)]
    for j, data in enumerate(damaged[:corrupt]):
      key = f"bad/{j}.{'png' if j == 2 else 'jpg'}"
      _write(os.path.join(images, key), data)
      bad.append(key)
      rows.insert(3 + 4 * j, {"image": key, "texts": ["broken"], "label": "photo", "origin": "x"})
  if fmt == "jsonl":
    captions = os.path.join(root, "captions.jsonl")
    with open(captions, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  else:
    captions = os.path.join(root, "captions.csv")
    with open(captions, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["filename", "captions", "label", "origin"])
      w.writerows([r["image"], "|".join(r["texts"]), r["label"], r["origin"]] for r in rows)
  return images, captions, expected, bad


def make_webdataset(root):
  """Two img2dataset-style tars plus the stats/parquet files beside them; expected examples."""
  os.makedirs(root, exist_ok=True)
  expected, keys_without_image = [], []
  items = list(_photos().items()) + [(f"digit{i}", im) for i, im in enumerate(_digits()[0][:6])]
  for shard in range(2):
    with tarfile.open(os.path.join(root, f"{shard:05d}.tar"), "w") as tar:
      def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
      for i, (name, img) in enumerate(items[shard::2]):
        key = f"{shard:05d}{i:04d}"
        ext, fmt = ("png", "PNG") if name.startswith("digit") else ("jpg", "JPEG")
        data = _encode(img, fmt)
        meta = {"url": f"https://example.com/{name}.{ext}", "key": key, "status": "success",
                "width": img.shape[1], "height": img.shape[0]}
        add(f"{key}.{ext}", data)
        add(f"{key}.txt", f"a picture of {name}".encode())
        add(f"{key}.json", json.dumps(meta).encode())
        label = -1
        if name.startswith("digit"):
          label = _digits()[1][int(name[5:])]
          add(f"{key}.cls", str(label).encode())
        expected.append({"key": key, "image": data, "texts": (f"a picture of {name}",),
                         "label": label, "meta": meta})
      key = f"{shard:05d}9999"  # A failed download: text and json, no image.
      add(f"{key}.txt", b"lost")
      add(f"{key}.json", b'{"status": "failed_to_download"}')
      keys_without_image.append(key)
    _write(os.path.join(root, f"{shard:05d}_stats.json"), json.dumps({"successes": 7}).encode())
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"key": ["x"], "url": ["y"]}),
                   os.path.join(root, f"{shard:05d}.parquet"))
  return expected, keys_without_image


def run(argv, **kw):
  """make_dataset.main in-process; returns (exit status, stderr text)."""
  log = io.StringIO()
  code = make_dataset.main([str(a) for a in argv], log=log, **kw)
  return code, log.getvalue()


def raw_records(out, split="train"):
  """Every record of a split, decoded with meta, in order."""
  from array_record.python.array_record_module import ArrayRecordReader
  with open(os.path.join(out, "dataset.json")) as f:
    meta = json.load(f)
  exs = []
  for shard in meta["splits"][split]["shards"]:
    reader = ArrayRecordReader(os.path.join(out, shard["file"]))
    exs += [records.decode(r) for r in reader.read_all()]
    reader.close()
  return exs


def assert_same(src, expected):
  assert len(src) == len(expected)
  for i, want in enumerate(expected):
    got = src[i]
    assert set(got) == {"key", "image", "texts", "label"}
    assert got["key"] == want["key"] and got["texts"] == want["texts"]
    assert got["label"] == want["label"] and got["label"].dtype == np.int32
    assert got["image"] == want["image"], f"image bytes of {want['key']} differ"


# ----------------------------------------------------------------------------- folder


@pytest.mark.unit
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_folder_to_shards_keeps_everything(tmp_path, fmt):
  images, captions, expected, _ = make_folder(tmp_path, fmt)
  out = tmp_path / "out"
  code, log = run(["--out", out, "--images", images, "--captions", captions,
                   "--examples_per_shard", 7])
  assert code == 0, log
  src = ShardSource(str(out), "train")
  assert_same(src, expected)
  assert src.class_names == tuple(sorted({"photo"} | {WORDS[t] for t in _digits()[1]}))
  # Identical bytes decode to identical pixels: spot-check a JPEG and a PNG.
  for i in (0, len(expected) - 1):
    with open(os.path.join(images, expected[i]["key"]), "rb") as f:
      np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(src[i]["image"]))),
                                    np.asarray(Image.open(f)))
  meta = json.loads((out / "dataset.json").read_text())
  assert meta["format"] == "bigvl-shards" and meta["version"] == 1
  assert meta["count"] == len(expected) == meta["splits"]["train"]["count"]
  assert [s["file"] for s in meta["splits"]["train"]["shards"]] == [
      f"train-{k:05d}.array_record" for k in range(-(-len(expected) // 7))]
  assert meta["features"] == ["image", "key", "label", "meta", "texts"]
  assert meta["splits"]["train"]["image_formats"] == {"jpeg": len(PHOTOS), "png": 12}
  assert raw_records(out)[0]["meta"] == {"origin": "skimage"}
  assert (out / "train-skipped.txt").read_text() == ""
  assert f"Wrote {len(expected)} examples" in log and "skipped 0" in log
  assert sorted(src.texts()) == sorted(t for e in expected for t in e["texts"])


@pytest.mark.unit
def test_folder_source_matches_shards_and_pickles(tmp_path):
  images, captions, expected, _ = make_folder(tmp_path)
  folder = sources.build({"name": "folder", "images_dir": images, "captions_file": captions})
  assert_same(folder, expected)
  # Evaluators pass a split; "{split}" in the captions path picks the file.
  template = captions.replace("captions.jsonl", "{split}.jsonl")
  os.rename(captions, template.format(split="test"))
  assert_same(sources.build({"name": "folder", "split": "test", "images_dir": images,
                             "captions_file": template}), expected)
  os.rename(template.format(split="test"), captions)
  run(["--out", tmp_path / "out", "--images", images, "--captions", captions])
  shards = sources.build({"name": "shards", "data_dir": str(tmp_path / "out"), "split": "train",
                          "pp": "decode"})
  _ = shards[0]  # Opens a reader: pickling must still work.
  for src in (folder, shards):
    clone = pickle.loads(pickle.dumps(src))
    assert_same(clone, expected)
    assert clone.class_names == folder.class_names and clone.texts() == folder.texts()


@pytest.mark.unit
def test_read_folder_skips_and_counts_missing_files(tmp_path):
  images, captions, expected, _ = make_folder(tmp_path)
  os.remove(os.path.join(images, expected[2]["key"]))
  reader = ingest.read_folder(images, captions)
  got = list(reader)
  assert [e["key"] for e in got] == [e["key"] for e in expected if e is not expected[2]]
  assert [s.key for s in reader.skipped] == [expected[2]["key"]]
  assert "missing file" in reader.skipped[0].reason
  with pytest.raises(FileNotFoundError, match="is missing.*make_dataset"):
    ingest.FolderSource(images, captions)[2]
  code, log = run(["--out", tmp_path / "out", "--images", images, "--captions", captions])
  assert code == 0 and f"skipped {expected[2]['key']}: missing file" in log
  assert len(ShardSource(str(tmp_path / "out"))) == len(expected) - 1


@pytest.mark.unit
def test_csv_caption_columns_and_integer_labels(tmp_path):
  _write(tmp_path / "im" / "a.png", _encode(_photos()["camera"], "PNG"))
  (tmp_path / "c.csv").write_text('path,captions,label\na.png,"[""one"", ""two|three""]",4\n'
                                  'a.png,x | y,\n')
  rows, names = ingest.parse_captions(str(tmp_path / "c.csv"))
  assert names is None
  assert [(r.texts, r.label) for r in rows] == [(("one", "two|three"), 4), (("x", "y"), -1)]


# ----------------------------------------------------------------------------- webdataset


@pytest.mark.unit
def test_webdataset_to_shards_keeps_everything(tmp_path):
  expected, no_image = make_webdataset(tmp_path / "wds")
  out = tmp_path / "out"
  code, log = run(["--out", out, "--webdataset", str(tmp_path / "wds" / "*"),
                   "--examples_per_shard", 5])
  assert code == 0, log
  assert_same(ShardSource(str(out)), [{k: v for k, v in e.items() if k != "meta"}
                                      for e in expected])
  assert [r["meta"] for r in raw_records(out)] == [e["meta"] for e in expected]
  skipped = (out / "train-skipped.txt").read_text().splitlines()
  assert [line.split("\t")[0] for line in skipped] == no_image
  # The directory form reads the same tars; a reader alone reports what it skipped.
  reader = ingest.read_webdataset(str(tmp_path / "wds"))
  assert [e["key"] for e in reader] == [e["key"] for e in expected]
  assert [s.key for s in reader.skipped] == no_image


@pytest.mark.unit
def test_webdataset_bad_members_and_truncated_tars(tmp_path):
  jpg = _encode(_photos()["cat"], "JPEG")
  with tarfile.open(tmp_path / "a.tar", "w") as tar:
    for name, data in (("k1.jpg", jpg), ("k1.cls", b"dog"), ("k2.jpg", jpg), ("k2.json", b"{"),
                       ("sub/k3.jpg", jpg), ("sub/k3.txt", b" a cat \n")):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  reader = ingest.read_webdataset(str(tmp_path / "a.tar"))
  assert [(e["key"], e["texts"]) for e in reader] == [("sub/k3", ("a cat",))]
  assert [(s.key, s.reason.split(" ")[1]) for s in reader.skipped] == [
      ("k1", "is"), ("k2", "is")]
  whole = (tmp_path / "a.tar").read_bytes()
  (tmp_path / "b.tar").write_bytes(whole[:700])  # Cut inside the first image.
  code, log = run(["--out", tmp_path / "out", "--webdataset", f"{tmp_path}/a.tar,{tmp_path}/b.tar"])
  assert code == 1 and "Cannot read webdataset tar" in log and "b.tar" in log


@pytest.mark.unit
def test_webdataset_brace_and_list_specs(tmp_path):
  make_webdataset(tmp_path)
  a = ingest.expand_tar_paths(str(tmp_path / "{00000..00001}.tar"))
  b = ingest.expand_tar_paths(f"{tmp_path}/00001.tar,{tmp_path}/00000.tar")
  assert a == b == [str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")]
  with pytest.raises(FileNotFoundError, match="00007.tar"):
    ingest.expand_tar_paths(str(tmp_path / "00007.tar"))


# ----------------------------------------------------------------------------- bad images


@pytest.mark.unit
def test_corrupt_images_are_skipped_and_reported(tmp_path):
  images, captions, expected, bad = make_folder(tmp_path, corrupt=3)
  out = tmp_path / "out"
  code, log = run(["--out", out, "--images", images, "--captions", captions,
                   "--examples_per_shard", 6])
  assert code == 0, log
  assert len(ShardSource(str(out))) == len(expected)  # N - 3.
  assert_same(ShardSource(str(out)), expected)
  for key in bad:
    assert f"skipped {key}: undecodable image" in log
  listed = (out / "train-skipped.txt").read_text().splitlines()
  assert [line.split("\t")[0] for line in listed] == bad
  assert "skipped 3" in log
  assert json.loads((out / "dataset.json").read_text())["splits"]["train"]["skipped"] == 3
  # Without verification the bad files are kept as they are (the decode op catches them).
  code, _ = run(["--out", tmp_path / "raw", "--images", images, "--captions", captions,
                 "--verify_images=false"])
  assert code == 0 and len(ShardSource(str(tmp_path / "raw"))) == len(expected) + 3


# ----------------------------------------------------------------------------- resume


def _shard_bytes(out):
  return {f: (out / f).read_bytes() for f in sorted(os.listdir(out)) if f.endswith(".array_record")}


@pytest.mark.unit
def test_interrupted_conversion_resumes_to_the_same_output(tmp_path, monkeypatch):
  images, captions, _, _ = make_folder(tmp_path, corrupt=3)
  args = ["--images", images, "--captions", captions, "--examples_per_shard", 4]
  code, _ = run(["--out", tmp_path / "full", *args])
  assert code == 0

  out = tmp_path / "resumed"
  with pytest.raises(RuntimeError, match="stopped after 2 shards"):
    run(["--out", out, *args], stop_after_shards=2)
  assert not (out / "dataset.json").exists()
  first = {f: os.stat(out / f).st_mtime_ns for f in ("train-00000.array_record",
                                                      "train-00001.array_record")}
  with pytest.raises(FileNotFoundError, match="make_dataset"):
    ShardSource(str(out))  # Half a conversion is not a dataset.
  with open(out / ".train-progress.jsonl", "a") as f:
    f.write('{"file": "train-00002.arr')  # A crash while recording shard 2.

  verified = []
  real_verify = make_dataset.verify_image
  monkeypatch.setattr(make_dataset, "verify_image", lambda d: verified.append(1) or real_verify(d))
  code, log = run(["--out", out, *args])
  assert code == 0, log
  assert "Resuming split 'train'" in log and "continuing from item 8" in log
  n_items = len(ingest.parse_captions(captions)[0])
  assert len(verified) == n_items - 8  # Finished shards' items are not decoded again.
  assert {f: os.stat(out / f).st_mtime_ns for f in first} == first  # Nor rewritten.
  assert _shard_bytes(out) == _shard_bytes(tmp_path / "full")
  for name in ("dataset.json", "train-skipped.txt"):
    assert (out / name).read_text() == (tmp_path / "full" / name).read_text()

  # A finished conversion run again changes nothing.
  code, _ = run(["--out", out, *args])
  assert code == 0 and _shard_bytes(out) == _shard_bytes(tmp_path / "full")


@pytest.mark.unit
def test_rerun_with_other_arguments_is_refused(tmp_path):
  images, captions, _, _ = make_folder(tmp_path)
  out = tmp_path / "out"
  with pytest.raises(RuntimeError):
    run(["--out", out, "--images", images, "--captions", captions, "--examples_per_shard", 4],
        stop_after_shards=1)
  code, log = run(["--out", out, "--images", images, "--captions", captions,
                   "--examples_per_shard", 5])
  assert code == 2
  assert "examples_per_shard: recorded 4, now 5" in log and ".train-progress.jsonl" in log
  with open(captions, "a") as f:
    f.write(json.dumps({"image": "photos/cat.jpg", "caption": "again"}) + "\n")
  code, log = run(["--out", out, "--images", images, "--captions", captions,
                   "--examples_per_shard", 4])
  assert code == 2 and "inputs: recorded" in log


# ----------------------------------------------------------------------------- errors


@pytest.mark.unit
def test_bad_arguments_exit_2_with_a_clear_message(tmp_path):
  images, captions, _, _ = make_folder(tmp_path)
  out = str(tmp_path / "out")
  code, log = run(["--out", out, "--images", images, "--captions", tmp_path / "nope.jsonl"])
  assert code == 2 and "Captions file not found" in log and "nope.jsonl" in log
  (tmp_path / "odd.csv").write_text("img,desc\nphotos/cat.jpg,a cat\n")
  code, log = run(["--out", out, "--images", images, "--captions", tmp_path / "odd.csv"])
  assert code == 2 and "no image column; found ['desc', 'img']" in log
  (tmp_path / "odd2.csv").write_text("image,desc\nphotos/cat.jpg,a cat\n")
  code, log = run(["--out", out, "--images", images, "--captions", tmp_path / "odd2.csv"])
  assert code == 2 and "no caption or label column" in log
  code, log = run(["--out", out, "--images", images])
  assert code == 2 and "--captions" in log
  code, log = run(["--out", out, "--images", images, "--captions", captions,
                   "--webdataset", images])
  assert code == 2 and "not both" in log
  code, log = run(["--out", out, "--webdataset", tmp_path / "none-*.tar"])
  assert code == 2 and "No .tar files match" in log
  code, log = run(["--out", out, "--images", images, "--captions", captions,
                   "--examples_per_shard", 0])
  assert code == 2 and "at least 1" in log
  # A split that exists from another conversion is not overwritten.
  assert run(["--out", out, "--images", images, "--captions", captions])[0] == 0
  os.remove(os.path.join(out, ".train-progress.jsonl"))
  code, log = run(["--out", out, "--images", images, "--captions", captions])
  assert code == 2 and "already has split 'train'" in log


@pytest.mark.unit
def test_splits_merge_into_one_dataset_json(tmp_path):
  images, captions, expected, _ = make_folder(tmp_path)
  out = tmp_path / "out"
  assert run(["--out", out, "--images", images, "--captions", captions])[0] == 0
  assert run(["--out", out, "--split", "test", "--images", images, "--captions", captions,
              "--examples_per_shard", 3])[0] == 0
  meta = json.loads((out / "dataset.json").read_text())
  assert sorted(meta["splits"]) == ["test", "train"] and meta["count"] == 2 * len(expected)
  assert sorted(meta["source"]) == ["test", "train"]
  assert len(ShardSource(str(out), "test")) == len(expected)


@pytest.mark.unit
def test_shard_source_errors_name_the_fix(tmp_path):
  images, captions, _, _ = make_folder(tmp_path)
  out = tmp_path / "out"
  with pytest.raises(FileNotFoundError, match="not found.*make_dataset"):
    ShardSource(str(out))
  out.mkdir()
  with pytest.raises(FileNotFoundError, match="dataset.json not found.*make_dataset"):
    ShardSource(str(out))
  assert run(["--out", out, "--images", images, "--captions", captions,
              "--examples_per_shard", 8])[0] == 0
  with pytest.raises(ValueError, match="no split 'val'; it has \\['train'\\]"):
    ShardSource(str(out), "val")
  meta = json.loads((out / "dataset.json").read_text())
  meta["splits"]["train"]["shards"][0]["count"] = 5
  meta["splits"]["train"]["count"] -= 3
  (out / "dataset.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="train-00000.array_record holds 8 records but "
                     "dataset.json says 5.*make_dataset"):
    ShardSource(str(out))


@pytest.mark.unit
def test_progress_lines_when_not_a_tty(tmp_path):
  stream = io.StringIO()
  p = make_dataset.ProgressLine(stream, total=100, every=0.0)
  p.update(40, 2)
  p.close()
  line = stream.getvalue().splitlines()[0]
  assert line.startswith("40/100 items, ") and "ETA" in line and line.endswith("skipped 2")
  tty = io.StringIO()
  tty.isatty = lambda: True
  p = make_dataset.ProgressLine(tty, total=None)
  p.update(7, 0, force=True)
  p.message("skipped x: why")
  p.close()
  text = tty.getvalue()
  assert text.startswith("\r\x1b[K7 items, ") and "\r\x1b[Kskipped x: why\n" in text
  assert text.endswith("skipped 0\n") and "ETA" not in text


@pytest.mark.integration
def test_cli_wrapper_runs(tmp_path):
  images, captions, expected, _ = make_folder(tmp_path)
  tool = os.path.join(REPO, "tools", "make_dataset.py")
  proc = subprocess.run([sys.executable, tool, "--out", str(tmp_path / "out"), "--images", images,
                         "--captions", captions], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert f"{len(expected)}/{len(expected)}" in proc.stderr
  proc = subprocess.run([sys.executable, tool, "--out", str(tmp_path / "x"), "--bogus"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "--bogus" in proc.stderr
