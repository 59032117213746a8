"""tools/convert_checkpoint.py from_workdir: a training run's two-tower params as a converted
checkpoint that load_converted reads back to the same outputs."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigvl import checkpoint
from bigvl.convert import ConversionError, from_workdir, load_converted, load_meta, preprocess
from bigvl.data import digits
from conftest import DEMO_SIGLIP, REPO, run_bigvl


@pytest.fixture(scope="module")
def siglip_run(tmp_path_factory):
  work = str(tmp_path_factory.mktemp("runs") / "siglip")
  run_bigvl([f"--config={DEMO_SIGLIP}:steps=3", f"--workdir={work}", "--config.evals={}"],
            check=True)
  return work


@pytest.mark.integration
@pytest.mark.slow
def test_from_workdir_loads_back_to_the_trained_model(siglip_run, tmp_path):
  out = str(tmp_path / "converted")
  proc = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "from_workdir",
                         siglip_run, out], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  meta = load_meta(out)
  assert (meta["image_size"], meta["channels"], meta["text_len"]) == (16, 1, 16)
  assert os.path.exists(os.path.join(out, "tokenizer.model"))
  model, params = load_converted(out)
  trained = checkpoint.load_params(siglip_run)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  assert len(flat) == len(trained)
  # preprocess() of the uint8 16x16 scans = the demo's resize(16)|value_range(-1, 1).
  raw = np.stack([np.asarray(digits.Digits("test")[i]["image"]) for i in range(4)])
  up = np.stack([np.round(np.asarray(jax.image.resize(r.astype(np.float32), (16, 16, 1),
                                                       "bilinear"))) for r in raw])
  images = preprocess(up.astype(np.uint8), meta)
  np.testing.assert_allclose(images, up / 127.5 - 1, atol=1e-6)
  text = np.tile(np.arange(3, 19, dtype=np.int32), (4, 1))
  zimg, ztxt, _ = model.apply({"params": params}, images, text)
  # The model and params the run trained, straight from its checkpoint.
  import json
  from bigvl import models
  from bigvl.convert import common
  with open(os.path.join(siglip_run, "config.json")) as f:
    run_model = models.build(json.load(f)["model"])
  ref_img, ref_txt, _ = run_model.apply({"params": common.unflatten(trained)}, images, text)
  assert zimg.shape == (4, 64)
  np.testing.assert_array_equal(zimg, ref_img)
  np.testing.assert_array_equal(ztxt, ref_txt)


@pytest.mark.unit
def test_from_workdir_refuses_what_it_cannot_hold(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a bigvl training workdir"):
    from_workdir(str(tmp_path), str(tmp_path / "out"))
  import json
  fake = tmp_path / "mae"
  fake.mkdir()
  (fake / "config.json").write_text(json.dumps({"model": {"name": "mae"}}))
  with pytest.raises(ConversionError, match="trained 'mae'"):
    from_workdir(str(fake), str(tmp_path / "out2"))
  assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "out2")
