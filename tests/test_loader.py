"""The training stream: mixtures, unreadable images, exact resume, per-process shares."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from bigvl import checkpoint as ckpt_lib
from bigvl.data import loader, transforms
from conftest import REPO
from data_sources import IndexSource, PngSource, digit_image, png_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
INDEX = dict(name="data_sources:IndexSource", n=120, pp="keep('index', 'image')")


def _indices(ds, steps):
  return np.stack([ds[s].inputs["index"] for s in steps])


@pytest.mark.unit
def test_each_epoch_is_a_new_permutation_of_the_whole_source():
  ds = loader.train_dataset(INDEX, batch_size=8, seed=0, context={})
  first, second = _indices(ds, range(15)).ravel(), _indices(ds, range(15, 30)).ravel()
  assert sorted(first) == sorted(second) == list(range(120))
  assert not np.array_equal(first, second)


@pytest.mark.parametrize("workers", [pytest.param(0, marks=pytest.mark.unit),
                                     # Worker processes: ~20 s.
                                     pytest.param(2, marks=[pytest.mark.integration,
                                                            pytest.mark.slow])])
def test_restored_iterator_state_gives_the_following_batches(tmp_path, workers):
  """Acceptance: batches 101-200 after restoring a checkpoint taken at batch 100 equal those
  of an uninterrupted loader (one process; two processes below)."""
  kwargs = dict(batch_size=8, seed=5, context={}, workers=workers)
  it = loader.train_iterator(INDEX, start_step=0, **kwargs)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  whole = []
  for step in range(1, 201):
    whole.append(next(it).inputs["index"])
    if step == 100:
      ckpt.save(step, {"x": np.zeros(1)}, _config(), data_state=it.get_state())
  it.close() if hasattr(it, "close") else None
  saved = ckpt_lib.Checkpointer(str(tmp_path)).restore_data_state(100)
  assert saved is not None
  again = loader.train_iterator(INDEX, start_step=0, state=saved, **kwargs)
  resumed = [next(again).inputs["index"] for _ in range(100)]
  again.close() if hasattr(again, "close") else None
  np.testing.assert_array_equal(np.stack(resumed), np.stack(whole[100:]))
  # And the stream is a function of the step: indexing it gives the same batches.
  np.testing.assert_array_equal(np.stack(whole), _indices(loader.train_dataset(
      INDEX, batch_size=8, seed=5, context={}), range(200)))


def _config():
  import ml_collections
  return ml_collections.ConfigDict(dict(note="test"))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir, workers, mode):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(HERE, "data_resume_check.py"), str(port), "2", str(p),
       str(workers), mode, str(workdir)], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for p in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(outs)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_two_process_resume_and_disjoint_shares(tmp_path, workers):
  """Acceptance: resume with 2 processes (jax.distributed over gloo), and the two
  processes' shares of an epoch are disjoint and cover the source."""
  _two_processes(tmp_path, workers, "run")
  _two_processes(tmp_path, workers, "resume")
  run = [np.load(tmp_path / f"run-{p}.npy") for p in range(2)]
  resume = [np.load(tmp_path / f"resume-{p}.npy") for p in range(2)]
  for p in range(2):
    assert run[p].shape == (200, 4)
    np.testing.assert_array_equal(resume[p], run[p][100:])
  # 120 examples, 8 per global batch: batches 0-14 are exactly the first epoch.
  epoch = [set(run[p][:15].ravel().tolist()) for p in range(2)]
  assert not epoch[0] & epoch[1]
  assert epoch[0] | epoch[1] == set(range(120))
  # Each process holds the same examples as the in-process split of the same stream.
  for p in range(2):
    local = loader.train_dataset(INDEX, batch_size=8, seed=5, context={}, process_index=p,
                                 process_count=2)
    np.testing.assert_array_equal(run[p], _indices(local, range(200)))


@pytest.mark.unit
def test_process_shares_are_disjoint_and_cover_an_epoch():
  """Acceptance: two processes read disjoint shares whose union is the whole dataset."""
  shares = []
  for p in range(2):
    ds = loader.train_dataset(INDEX, batch_size=8, seed=2, context={}, process_index=p,
                              process_count=2)
    shares.append(_indices(ds, range(15)).ravel())
  assert len(shares[0]) == len(shares[1]) == 60
  assert not set(shares[0]) & set(shares[1])
  assert set(shares[0]) | set(shares[1]) == set(range(120))
  # A process's share never touches the other's examples: each host reads only its part.
  read = []

  class Spy(IndexSource):
    def __getitem__(self, i):
      read.append(i)
      return super().__getitem__(i)
  import data_sources
  data_sources.Spy = Spy
  ds = loader.train_dataset(dict(INDEX, name="data_sources:Spy"), batch_size=8, seed=2,
                            context={}, process_index=1, process_count=2)
  _indices(ds, range(15))
  assert set(read) == set(shares[1].tolist())


@pytest.mark.unit
def test_mixture_follows_weights_and_each_component_pp():
  cfg = dict(pp="keep('index', 'image')", mixture=dict(
      low=dict(name="data_sources:IndexSource", n=50, weight=3.0),
      high=dict(name="data_sources:IndexSource", n=50, offset=1000, weight=1.0,
                pp="value_range(0, 1)")))
  ds = loader.train_dataset(cfg, batch_size=40, seed=0, context={})
  batches = [ds[s] for s in range(10)]
  idx = np.concatenate([b.inputs["index"] for b in batches])
  high = idx >= 1000
  assert abs(high.mean() - 0.25) < 0.03, high.mean()
  images = np.concatenate([b.inputs["image"] for b in batches])
  # The high component's own pp scaled its images to [0, 1]; the other's stay raw.
  assert images[high].max() <= 1.0 and images[~high].max() > 1.0
  again = loader.train_dataset(cfg, batch_size=40, seed=0, context={})
  np.testing.assert_array_equal(again[7].inputs["index"], batches[7].inputs["index"])
  with pytest.raises(ValueError, match="weights must be > 0"):
    loader.train_dataset(dict(cfg, mixture=dict(a=dict(name="data_sources:IndexSource",
                                                       weight=0.0))),
                         batch_size=8, seed=0, context={})


@pytest.mark.unit
def test_corrupt_images_are_replaced_counted_and_logged(capfd):
  cfg = dict(name="data_sources:PngSource", n=100, corrupt=(7, 42, 99),
             pp="decode|keep('image', 'index')")
  ds = loader.train_dataset(cfg, batch_size=10, seed=0, context={})
  batches = [ds[s] for s in range(10)]  # Exactly one epoch.
  assert sum(int(b.skipped.sum()) for b in batches) == 3
  for b in batches:
    assert b.inputs["image"].shape == (10, 16, 16, 3)
    # A replaced slot holds a readable example, not one of the corrupt ones.
    assert not set(b.inputs["index"][b.skipped].tolist()) & {7, 42, 99}
  err = capfd.readouterr().err
  for key in ("img007.png", "img042.png", "img099.png"):
    assert f"skipping unreadable example {key} (source data_sources:PngSource" in err
  with pytest.raises(loader.DataError, match="Unreadable example.*img0(07|42)|on_corrupt"):
    strict = loader.train_dataset(cfg, batch_size=10, seed=0, context={}, on_corrupt="error")
    [strict[s] for s in range(10)]


@pytest.mark.unit
def test_all_corrupt_data_stops_with_a_clear_error():
  cfg = dict(name="data_sources:PngSource", n=5, corrupt=range(5), pp="decode")
  ds = loader.train_dataset(cfg, batch_size=2, seed=0, context={})
  with pytest.raises(loader.DataError, match="data looks broken"):
    ds[0]


@pytest.mark.unit
def test_decode_and_inception_crop():
  img = digit_image(3)
  data = png_bytes(img)
  out = transforms.build("decode")({"image": data}, None)["image"]
  np.testing.assert_array_equal(out, img)
  grey = transforms.build("decode(1)")({"image": data}, None)["image"]
  assert grey.shape == (16, 16, 1)
  crop = transforms.build("inception_crop(8)")
  rng = lambda: np.random.default_rng(3)
  a = crop({"image": data}, rng())["image"]
  b = crop({"image": img}, rng())["image"]
  assert a.shape == b.shape == (8, 8, 3) and a.dtype == np.uint8
  # From bytes and from pixels: the same crop box, the same resize.
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, crop({"image": data}, np.random.default_rng(4))["image"])
  # Evaluation: the whole image, resized.
  whole = crop({"image": data}, None)["image"]
  from PIL import Image
  np.testing.assert_array_equal(whole, np.asarray(Image.fromarray(img).resize((8, 8),
                                                                              Image.BILINEAR)))
  with pytest.raises(transforms.CorruptImage, match="bad.jpg"):
    transforms.build("decode")({"image": b"\xff\xd8garbage", "key": "bad.jpg"}, None)


@pytest.mark.unit
def test_inception_crop_boxes_follow_scale_and_ratio():
  rng = np.random.default_rng(0)
  boxes = [transforms.sample_crop_box(300, 400, rng, (0.08, 1.0), (3 / 4, 4 / 3))
           for _ in range(2000)]
  area = np.array([h * w for _, _, h, w in boxes]) / (300 * 400)
  ratio = np.array([w / h for _, _, h, w in boxes])
  assert area.min() >= 0.07 and area.max() <= 1.0
  assert ratio.min() > 0.7 and ratio.max() < 1.4
  assert all(0 <= y and y + h <= 300 and 0 <= x and x + w <= 400 for y, x, h, w in boxes)
  assert 0.4 < area.mean() < 0.6  # Uniform in [0.08, 1] minus rejected tall/wide draws.


@pytest.mark.unit
def test_feistel_shuffle_is_a_permutation_with_a_new_order_each_epoch():
  from bigvl.data import shuffle
  for n in (1, 2, 3, 7, 100, 1000, 4097):
    orders = [[shuffle.permute(i, n, shuffle.epoch_key(5, e)) for i in range(n)]
              for e in range(3)]
    for order in orders:
      assert sorted(order) == list(range(n))
    if n > 3:
      assert orders[0] != orders[1] != orders[2]
  with pytest.raises(IndexError):
    shuffle.permute(10, 10, 0)
  # Roughly uniform: where index 0 lands over many keys covers every position.
  landing = np.bincount([shuffle.permute(0, 10, shuffle.epoch_key(s, 0)) for s in range(2000)],
                        minlength=10)
  assert landing.min() > 140, landing
