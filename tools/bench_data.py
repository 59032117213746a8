"""Images/s of the training input pipeline against a plain PIL loop on the same files.

    python tools/bench_data.py [--num_images 256] [--size 500x375] [--workers 0,1,2] \
        [--batch_size 32] [--batches 12] [--out benchmarks/data_cpu.json]

Makes `--num_images` JPEG photos (crops of scikit-image's sample photos, resized to
`--size`, the shape of a typical ImageNet/LAION image) with captions in a temporary
folder, converts them with make_dataset into bigvl shards, then times, in this one run:

* baseline: a single-process Python loop over the same files: PIL open + decode to RGB,
  random resized crop 224 (PIL resize with a box), random flip, normalize to float32 with
  ImageNet statistics, tokenize the caption;
* bigvl: `loader.train_iterator` over the shards with the pp
  `inception_crop(224)|flip_lr|normalize('imagenet')|choose_text|tokenize(...)`, the same
  work per image, for each worker count (0: in the main process), batches of
  `--batch_size`; the same with a separate `decode|` first (no JPEG DCT scaling), to
  show what the fused decode-and-crop gains; and the fused pp as training runs it by default
  (`device_ops=True`, config.data.device_normalize): the batch stays uint8 and normalize
  runs in the train step on the accelerator, so the host does everything but normalize.

Each row: images/s over `--batches` batches after 2 warm-up batches (worker start-up not
timed), images per CPU-second (the CPU time of this process, all its threads, and of its
worker processes over the same interval: images per second of one busy core, what a data
host's core budget buys, independent of how many cores the machine lends), and the ratios
of both to the baseline's. The baseline is timed three times (first, between and after the
bigvl rows) and the fastest (by wall time) is the reference, since a shared machine's
speed drifts. stdout: a Markdown table; `--out` also writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "coins", "camera", "immunohistochemistry")
MEAN = np.float32([0.485, 0.456, 0.406])
STD = np.float32([0.229, 0.224, 0.225])


def log(msg):
  print(msg, file=sys.stderr, flush=True)


def make_files(root: str, n: int, size: tuple[int, int]) -> tuple[str, str]:
  """n JPEGs of `size` (w, h) cut from the sample photos, and a captions JSONL."""
  from PIL import Image
  from skimage import data as skdata
  images = os.path.join(root, "images")
  os.makedirs(images, exist_ok=True)
  rng = np.random.default_rng(0)
  photos = [Image.fromarray(getattr(skdata, p)()).convert("RGB") for p in PHOTOS]
  captions = os.path.join(root, "captions.jsonl")
  with open(captions, "w") as f:
    for i in range(n):
      k = i % len(photos)
      img = photos[k]
      w, h = img.size
      s = rng.uniform(0.6, 1.0)
      x, y = rng.uniform(0, w * (1 - s)), rng.uniform(0, h * (1 - s))
      out = img.resize(size, Image.BILINEAR, box=(x, y, x + s * w, y + s * h))
      out.save(os.path.join(images, f"{i:05d}.jpg"), quality=90)
      f.write(json.dumps({"image": f"{i:05d}.jpg",
                          "caption": f"a photo of {PHOTOS[k]} number {i}"}) + "\n")
  return images, captions


def _descendants(pid: int) -> list[int]:
  """Live descendant processes of `pid` (Linux /proc; [] elsewhere)."""
  out, todo = [], [pid]
  while todo:
    p = todo.pop()
    try:
      tids = os.listdir(f"/proc/{p}/task")
    except OSError:
      continue
    for tid in tids:
      try:
        with open(f"/proc/{p}/task/{tid}/children") as f:
          kids = [int(k) for k in f.read().split()]
      except OSError:
        kids = []
      out += kids
      todo += kids
  return out


def cpu_seconds() -> float:
  """CPU seconds (user + system) used so far by this process (all threads), its finished
  children, and its live descendants (grain workers), which `os.times` alone misses until
  they are reaped."""
  t = os.times()
  total = t.user + t.system + t.children_user + t.children_system
  tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
  for pid in _descendants(os.getpid()):
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue  # Exited meanwhile: counted in children_* once reaped.
    total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (stat fields 14, 15).
  return total


def pil_loop(images: str, captions: str, tok, text_len: int, count: int) -> tuple[float, float]:
  """(images/s, images per CPU-second) of the plain single-process loop over `count` images."""
  from PIL import Image
  from bigvl.data.transforms import sample_crop_box
  rows = [json.loads(l) for l in open(captions)]
  rng = np.random.default_rng(0)
  c0, t0 = cpu_seconds(), time.perf_counter()
  for i in range(count):
    row = rows[i % len(rows)]
    with Image.open(os.path.join(images, row["image"])) as im:
      im = im.convert("RGB")
      y, x, h, w = sample_crop_box(im.size[1], im.size[0], rng)
      arr = np.asarray(im.resize((224, 224), Image.BILINEAR, box=(x, y, x + w, y + h)))
    if rng.random() < 0.5:
      arr = arr[:, ::-1]
    arr = (arr.astype(np.float32) / 255.0 - MEAN) / STD
    tok.encode(row["caption"], text_len)
  wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
  return count / wall, count / cpu


def pipeline(data_dir: str, pp: str, tok, text_len: int, workers: int, batch_size: int,
             batches: int, device_ops: bool = False) -> tuple[float, float]:
  """(images/s, images per CPU-second) of the training iterator; `device_ops`: the batch
  leaves uint8, its normalize left to the train step (not run here)."""
  from bigvl.data import loader
  cfg = dict(name="shards", data_dir=data_dir, pp=pp)
  it = loader.train_iterator(cfg, batch_size=batch_size, seed=0, start_step=0,
                             context=dict(tokenizer=tok, text_len=text_len), workers=workers,
                             prefetch=2, device_ops=device_ops)
  for _ in range(2):  # Warm-up: worker start-up and first reads are not throughput.
    next(it)
  dtype = np.uint8 if device_ops else np.float32
  # Prefetching workers keep working past the last timed batch; the CPU interval is the
  # wall interval's, so what they did for batches not taken counts against this row.
  c0, t0 = cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    b = next(it).inputs
    assert b["image"].shape == (batch_size, 224, 224, 3) and b["image"].dtype == dtype
  wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
  if hasattr(it, "close"):
    it.close()
  return batches * batch_size / wall, batches * batch_size / cpu


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--num_images", type=int, default=256)
  p.add_argument("--size", default="500x375", help="WxH of the generated JPEGs.")
  p.add_argument("--workers", default="0,1,2", help="Comma list of worker counts.")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--batches", type=int, default=12)
  p.add_argument("--text_len", type=int, default=16)
  p.add_argument("--out", default="", help="Also write the results as JSON here.")
  args = p.parse_args(argv)
  size = tuple(int(v) for v in args.size.split("x"))
  workers = [int(w) for w in args.workers.split(",")]

  from bigvl.data import make_dataset, tokenizer as tok_lib
  with tempfile.TemporaryDirectory() as tmp:
    log(f"Writing {args.num_images} JPEGs of {size[0]}x{size[1]} ...")
    images, captions = make_files(tmp, args.num_images, size)
    data_dir = os.path.join(tmp, "shards")
    code = make_dataset.main(["--out", data_dir, "--images", images, "--captions", captions,
                              "--examples_per_shard", "64"], log=open(os.devnull, "w"))
    assert code == 0, "make_dataset failed"
    texts = [json.loads(l)["caption"] for l in open(captions)]
    tok = tok_lib.train(texts, vocab_size=200)
    count = args.batches * args.batch_size
    tail = f"flip_lr|normalize('imagenet')|choose_text|tokenize|keep('image', 'text')"
    rows, bases = [], []
    log("baseline: plain PIL loop ...")
    bases.append(pil_loop(images, captions, tok, args.text_len, count))
    for pp_name, pp, device_ops in (
        ("bigvl inception_crop (fused decode)", f"inception_crop(224)|{tail}", False),
        ("bigvl decode|inception_crop", f"decode|inception_crop(224)|{tail}", False),
        ("bigvl inception_crop, uint8 out (normalize on device)", f"inception_crop(224)|{tail}",
         True)):
      for w in workers:
        log(f"{pp_name}, {w} workers ...")
        rate, cpu_rate = pipeline(data_dir, pp, tok, args.text_len, w, args.batch_size,
                                  args.batches, device_ops)
        rows.append(dict(pipeline=pp_name, workers=w, images_per_sec=rate,
                         images_per_cpu_sec=cpu_rate))
      # The machine's speed drifts (shared hosts): time the baseline between the rows too,
      # and compare against its fastest run, which understates bigvl's ratio if anything.
      log("baseline: plain PIL loop ...")
      bases.append(pil_loop(images, captions, tok, args.text_len, count))
  base, base_cpu = max(bases)
  rows.insert(0, dict(pipeline="plain PIL loop (1 process), fastest of "
                      + ", ".join(f"{b:.1f}" for b, _ in bases), workers=None,
                      images_per_sec=base, images_per_cpu_sec=base_cpu))
  for r in rows:
    r["ratio_to_baseline"] = r["images_per_sec"] / base
    r["cpu_ratio_to_baseline"] = r["images_per_cpu_sec"] / base_cpu
  print("| pipeline | workers | images/s | vs PIL loop | images/CPU-s | vs PIL loop (CPU) |\n"
        "|---|---|---|---|---|---|")
  for r in rows:
    w = "-" if r["workers"] is None else r["workers"]
    print(f"| {r['pipeline']} | {w} | {r['images_per_sec']:.1f} | "
          f"{r['ratio_to_baseline']:.2f}x | {r['images_per_cpu_sec']:.1f} | "
          f"{r['cpu_ratio_to_baseline']:.2f}x |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(args=vars(args), cpu_count=os.cpu_count(), rows=rows), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
