"""uint8 image input (issue 19): a train pp's trailing value_range/normalize on a uint8 field
runs in the train step, so images cross to the device as uint8; the result equals the host
(float32-transfer) path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl import config_lib, run as run_lib
from bigvl.data import loader, tokenizer as tok_lib, transforms
from conftest import DEMO_SIGLIP

TAIL = "choose_text|tokenize|keep('image', 'text')"


@pytest.fixture(scope="module")
def tok():
  from bigvl.data import digits
  return tok_lib.train(digits.Digits("train").texts(), vocab_size=96)


def _both(cfg, tok, steps=(0, 1, 7), batch_size=4, text_len=16):
  """[(host-path batch, uint8 batch, DeviceTransform)] of steps of `cfg`'s stream."""
  ctx = dict(tokenizer=tok, text_len=text_len)
  host = loader.train_dataset(cfg, batch_size=batch_size, seed=1, context=ctx)
  dev, transform = loader.train_pipeline(cfg, batch_size=batch_size, seed=1, context=ctx,
                                         device_ops=True)
  return [(host[s].inputs, dev[s].inputs, transform) for s in steps]


@pytest.mark.unit
@pytest.mark.parametrize("op", [
    "value_range(-1, 1)", "value_range(0, 1)", "value_range(-0.5, 2.0, in_min=10, in_max=200)",
    "normalize('imagenet')", "normalize('clip')", "normalize('siglip')",
    "value_range(0, 1)|value_range(-1, 1, in_min=0, in_max=1)",
])
@pytest.mark.parametrize("channels", [1, 3])
def test_device_transform_equals_the_host_op(op, channels):
  """(c) On random uint8 images, the deferred affine (jitted, as in the step) equals the host
  op, grey images with per-channel statistics included."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 7, 9, channels), dtype=np.uint8)
  ops = transforms.build_ops(op)
  host_ops, deferred = transforms.split_device_tail(ops)
  assert host_ops == [] and list(deferred) == ["image"]
  want = np.stack([transforms.chain(ops)({"image": im})["image"] for im in images])
  transform = transforms.DeviceTransform((("image", tuple(deferred["image"])),))
  got = jax.jit(transform)({"image": jnp.asarray(images)})["image"]
  assert got.dtype == jnp.float32 and got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("pp", [
    # SigLIP demo's: resize keeps uint8 (rounded), so value_range is deferred.
    f"resize(16)|random_crop(16, pad=2)|value_range(-1, 1)|{TAIL}",
    f"resize(12)|flip_lr|normalize('clip')|{TAIL}",   # Grey digits -> 3 channels on device.
    f"rgb|central_crop(6)|value_range(0, 1)|{TAIL}",
])
def test_stream_defers_a_trailing_affine_and_matches_the_host_path(tok, pp):
  for host, dev, transform in _both(dict(name="digits", split="train", pp=pp), tok):
    assert transform.fields == ("image",)
    assert host["image"].dtype == np.float32 and dev["image"].dtype == np.uint8
    np.testing.assert_array_equal(dev["text"], host["text"])
    got = np.asarray(jax.jit(transform)(dev)["image"])
    np.testing.assert_allclose(got, host["image"], rtol=0, atol=1e-6)


@pytest.mark.unit
def test_multi_crop_fields_and_each_image_are_deferred_per_field(tok):
  """DINO's two crop fields, each with its own value_range; Flamingo's each_image."""
  pp = ("multi_crop(16, 8, num_global=2, num_local=2, channels=1)|"
        "value_range(-1, 1, key='crops_global')|normalize('siglip', key='crops_local')|"
        "keep('crops_global', 'crops_local')")
  for host, dev, transform in _both(dict(name="digits", split="train", pp=pp), tok):
    assert transform.fields == ("crops_global", "crops_local")
    for k in transform.fields:
      assert dev[k].dtype == np.uint8
      np.testing.assert_allclose(np.asarray(transform(dev)[k]), host[k], rtol=0, atol=1e-6)
  inner = dict(name="interleaved", inner=dict(name="digits", split="train"), k=3)
  pp = "each_image('resize(16)|value_range(-1, 1)')|interleave_text|tokenize|keep('images', 'text')"
  for host, dev, transform in _both(dict(inner, pp=pp), tok, text_len=48):
    assert transform.fields == ("images",) and dev["images"].dtype == np.uint8
    np.testing.assert_allclose(np.asarray(transform(dev)["images"]), host["images"], rtol=0,
                               atol=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("pp", [
    # A geometric op after value_range: value_range stays on the host.
    "value_range(-1, 1)|resize(8)|keep('image')",
    "normalize('clip')|flip_lr|keep('image')",
    # Float before the deferrable op: the last value_range goes back on the host.
    "value_range(0, 255)|flip_lr|value_range(-1, 1)|keep('image')",
    # An op that declares no fields (a user's op) is a barrier.
    "value_range(-1, 1)|test_uint8_any_op|keep('image')",
])
def test_not_deferred_when_the_field_is_touched_after_or_not_uint8(tok, pp):
  """(d) Not deferred, and the batches equal the plain host pipeline's."""
  from bigvl.registry import PP_OPS
  if "test_uint8_any_op" not in PP_OPS.names():
    PP_OPS.register("test_uint8_any_op")(lambda: (lambda ex, rng: ex))
  for host, dev, transform in _both(dict(name="digits", split="train", pp=pp), tok):
    assert not transform and dev["image"].dtype == np.float32
    np.testing.assert_array_equal(dev["image"], host["image"])


@pytest.mark.unit
def test_a_later_float_example_is_an_error_naming_the_fix(tok):
  class Mixed:
    """uint8 for the example at stream position 0 (the loader's probe), float32 otherwise."""
    uint8_key = None

    def __len__(self):
      return 4

    def __getitem__(self, i):
      dtype = np.uint8 if f"m/{i}" == Mixed.uint8_key else np.float32
      return {"image": np.zeros((4, 4, 1), dtype), "texts": ("a",), "key": f"m/{i}"}
  from bigvl.registry import SOURCES
  if "test_uint8_mixed" not in SOURCES.names():
    SOURCES.register("test_uint8_mixed")(Mixed)
  cfg = dict(name="test_uint8_mixed", pp="value_range(-1, 1)|keep('image')")
  Mixed.uint8_key = loader.Stream(cfg, seed=0, context={}).examples[0][1]["key"]
  stream = loader.Stream(cfg, seed=0, context={}, device_ops=True)
  assert stream.device_transform.fields == ("image",)
  j = next(j for j in range(1, 50) if stream.examples[j][1]["key"] != Mixed.uint8_key)
  with pytest.raises(loader.DataError, match="device_normalize=False"):
    stream.example(j)


def _siglip(device_normalize: bool, batch: int = 8):
  config = config_lib.load_config_file(f"{DEMO_SIGLIP}:steps=5,batch={batch}")
  config.data.device_normalize = device_normalize
  config.evals = {}
  return run_lib.build(config, None)


@pytest.mark.unit
def test_siglip_demo_sends_uint8_images_a_quarter_of_the_bytes(monkeypatch):
  """(a) What Run.global_batch hands to jax.make_array_from_process_local_data."""
  sent = {}

  def spy(sharding, x, *a, **k):
    sent.setdefault("calls", []).append((x.dtype, x.nbytes, x.shape))
    return real(sharding, x, *a, **k)
  real = jax.make_array_from_process_local_data
  monkeypatch.setattr(jax, "make_array_from_process_local_data", spy)
  nbytes = {}
  for dn in (True, False):
    run = _siglip(dn)
    sent["calls"] = []
    with run.context():
      inputs, _ = run.global_batch(run.train_iterator(0).__next__())
    image = [c for c in sent["calls"] if c[2] == (8, 16, 16, 1)]
    assert len(image) == 1
    nbytes[dn] = image[0][1]
    assert image[0][0] == (np.uint8 if dn else np.float32)
    assert run.batch_spec["image"].dtype == (np.uint8 if dn else np.float32)
    assert run.input_spec()["image"].dtype == np.float32
  assert nbytes[False] == 4 * nbytes[True] == 4 * 8 * 16 * 16


@pytest.mark.integration
@pytest.mark.slow  # Two demo trainings (about 40 s): the default suite stays under 10 minutes.
def test_siglip_demo_losses_equal_the_float32_transfer_path():
  """(b) 5 train steps, same seed: losses within 1e-6."""
  losses = {}
  for dn in (True, False):
    run = _siglip(dn)
    with run.context():
      state, shardings = run.create_state()
      step, _ = run.compile_step(state, shardings)
      it = run.train_iterator(0)
      out = []
      for _ in range(5):
        state, result = step(state, *run.global_batch(next(it)))
        out.append(float(result.metrics["train/loss"]))
    losses[dn] = np.asarray(out)
  print("losses uint8:", losses[True], "float32:", losses[False],
        "max diff:", np.abs(losses[True] - losses[False]).max())
  np.testing.assert_allclose(losses[True], losses[False], rtol=0, atol=1e-6)


@pytest.mark.integration
@pytest.mark.slow
def test_bench_data_reports_images_per_cpu_second(tmp_path):
  """tools/bench_data.py: per-wall-second and per-CPU-second rates, the uint8 row included."""
  import json
  import subprocess
  import sys
  from conftest import REPO
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, "tools/bench_data.py", "--num_images", "16",
                         "--batches", "1", "--batch_size", "8", "--workers", "0",
                         "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "| images/CPU-s | vs PIL loop (CPU) |" in proc.stdout
  rows = json.loads(out.read_text())["rows"]
  assert any("uint8 out" in r["pipeline"] for r in rows)
  assert all(r["images_per_cpu_sec"] > 0 and r["cpu_ratio_to_baseline"] > 0 for r in rows)
