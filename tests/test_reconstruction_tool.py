"""tools/visualize_reconstruction.py on a short MAE run: the PNG has the three documented rows."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bigvl.evaluators.reconstruction import reconstruct
from conftest import REPO, load_tool, run_bigvl

MAE = os.path.join(REPO, "configs", "demo", "mae_digits.py")


@pytest.mark.integration
@pytest.mark.slow
def test_reconstruction_png_rows_original_masked_reconstruction(tmp_path):
  work = str(tmp_path / "mae")
  run_bigvl([f"--config={MAE}:steps=20", f"--workdir={work}", "--config.log_every=10",
             "--config.evals={}"], check=True)
  out = str(tmp_path / "recon.png")
  proc = subprocess.run([sys.executable, "tools/visualize_reconstruction.py", "--workdir", work,
                         "--out", out, "--num", "5", "--scale", "2"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "rows original / masked (75% of patches) / reconstruction" in proc.stdout
  png = np.asarray(Image.open(out))
  cell, gap = 16 * 2, 2
  assert png.shape == (3 * cell + 2 * gap, 5 * cell + 4 * gap, 3)
  rows = [[png[r * (cell + gap):r * (cell + gap) + cell, i * (cell + gap):i * (cell + gap) + cell, 0]
           for i in range(5)] for r in range(3)]
  for original, masked, recon in zip(*rows):
    # Patches of 4x4 image pixels = 8x8 PNG pixels; 12 of the 16 are masked at ratio 0.75.
    patches = lambda a: a.reshape(4, 8, 4, 8).swapaxes(1, 2).reshape(16, 64)
    o, m, r = patches(original), patches(masked), patches(recon)
    grey = np.all(m == 128, axis=1)
    assert grey.sum() == 12
    np.testing.assert_array_equal(m[~grey], o[~grey])       # Visible patches as they were.
    np.testing.assert_array_equal(r[~grey], o[~grey])
    assert not np.all(r[grey] == 128)                        # Masked ones are predicted.
  # The first row is the test images themselves (digits test split, eval pp).
  from bigvl.data import digits
  from bigvl.data.transforms import build
  img = build("resize(16)|random_crop(16, pad=2)|value_range(-1, 1)")(
      digits.Digits("test")[0])["image"]
  expected = np.round(np.clip((img[..., 0] + 1) / 2, 0, 1) * 255).astype(np.uint8)
  np.testing.assert_array_equal(rows[0][0], expected.repeat(2, 0).repeat(2, 1))


@pytest.mark.integration
@pytest.mark.slow
def test_reconstruction_grid_in_process(tmp_path):
  """The fast twin of the test above: reconstruct() and grid_png() on init params."""
  import jax
  from bigvl import models, objectives
  tool = load_tool("visualize_reconstruction")
  model = models.build(dict(name="mae", encoder=dict(width=32, depth=1, mlp_dim=64,
                                                     num_heads=4, patch_size=4),
                            decoder_width=16, decoder_depth=1, decoder_mlp_dim=32,
                            decoder_heads=2, channels=1))
  images = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (3, 16, 16, 1)) * 2 - 1)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), images)["params"]
  masked, recon, mask = reconstruct(model, objectives.build(dict(name="mae")), params,
                                    images, jax.random.PRNGKey(1))
  assert mask.sum(1).tolist() == [12, 12, 12]
  png = tool.grid_png([images, masked, recon], str(tmp_path / "g.png"), -1, 1, scale=1, gap=1)
  assert png.shape == (3 * 16 + 2, 3 * 16 + 2, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), png)
  grey = (png[17:33, :16, 0] == 128).reshape(4, 4, 4, 4).swapaxes(1, 2).reshape(16, 16)
  assert grey.all(1).sum() == 12   # Masked patches are grey in the middle row.


@pytest.mark.unit
def test_reconstruction_refuses_a_non_mim_run():
  from bigvl import objectives
  with pytest.raises(ValueError, match="Siglip; reconstructions need mae or simmim"):
    reconstruct(None, objectives.build(dict(name="siglip")), {}, np.zeros((1, 16, 16, 1)),
                     None)


@pytest.mark.integration
@pytest.mark.slow
def test_reconstruction_evaluator_writes_its_grid_to_tensorboard(tmp_path):
  import jax
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from bigvl import metrics, models, objectives, sharding as sh
  from bigvl.evaluators import EvalContext, build
  model = models.build(dict(name="mae", encoder=dict(width=32, depth=1, mlp_dim=64,
                                                     num_heads=4, patch_size=4),
                            decoder_width=16, decoder_depth=1, decoder_mlp_dim=32,
                            decoder_heads=2, channels=1))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 1)))["params"]
  ctx = EvalContext(model=model, tokenizer=None, text_len=16,
                    mesh=sh.make_mesh(dict(data=-1, fsdp=1, tensor=1)), rules=sh.get_rules("dp"),
                    objective=objectives.build(dict(name="mae")))
  ev = build("recon", dict(name="reconstruction", data=dict(
      name="digits", split="test", pp="resize(16)|value_range(-1, 1)"),
      num_images=4, max_examples=64), ctx)
  out = ev.run(params)
  assert out["loss"] > 0
  grid = ev.images()["reconstruction"]
  assert grid.shape == (3 * 64 + 4, 4 * 64 + 6, 3) and grid.dtype == np.uint8
  writer = metrics.run_writers(str(tmp_path))
  writer.write_images(7, {"eval/recon/reconstruction": grid})
  writer.close()
  acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
  (event,) = acc.Images("eval/recon/reconstruction")
  assert (event.step, event.height, event.width) == (7, grid.shape[0], grid.shape[1])
  import io
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string))),
                                grid)


@pytest.mark.integration
@pytest.mark.slow
def test_a_vit_classifier_fine_tunes_from_the_mae_encoder(tmp_path):
  """init_subtree='enc' loads exactly the MAE encoder's params into a `vit`; only the new
  classification head starts fresh, and the supervised loss trains."""
  from bigvl import checkpoint

  work = str(tmp_path / "mae")
  run_bigvl([f"--config={MAE}:steps=5", f"--workdir={work}", "--config.evals={}"], check=True)
  enc = checkpoint.subtree(checkpoint.load_params(work), "enc")
  cls = str(tmp_path / "cls")
  proc = run_bigvl([
      f"--config={MAE}:steps=30", f"--workdir={cls}", "--config.evals={}",
      "--config.log_every=10", f"--config.init_from={work}", "--config.init_subtree=enc",
      "--config.model={'name': 'vit', 'width': 64, 'depth': 4, 'mlp_dim': 256, "
      "'num_heads': 4, 'patch_size': 4, 'posemb': 'learn', 'pool': 'gap', 'num_classes': 10}",
      "--config.objective={'name': 'classification'}",
      "--config.data.train.pp=resize(16)|value_range(-1, 1)|keep('image', 'label')"],
      check=True)
  assert f"{len(enc)} loaded, 2 new, 0 shape-mismatched (kept new), 0 dropped" in proc.stdout
  assert "new: head/kernel" in proc.stdout and "new: head/bias" in proc.stdout
  import json
  rows = [json.loads(l) for l in open(f"{cls}/metrics.jsonl") if "train/loss" in l]
  assert rows[-1]["train/loss"] < rows[0]["train/loss"]
  assert rows[-1]["train/accuracy"] > 0.3

  bad = run_bigvl([f"--config={MAE}:steps=1", f"--workdir={tmp_path}/bad", "--config.evals={}",
                   f"--config.init_from={work}", "--config.init_subtree=encoder"])
  assert bad.returncode == 1 and "init_subtree='encoder' matches no param" in bad.stderr
  assert "'enc'" in bad.stderr
