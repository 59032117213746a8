"""HF transformers ViTModel / ViTForImageClassification -> bigvl ViT: the same outputs.

Tolerance: max |bigvl - HF| <= 1e-5 on the pooler output (dense + tanh of the class token,
bigvl's rep_size) and on classifier logits; 1e-4 on last_hidden_state, whose entries are
~30x larger. float32, random weights (every parameter perturbed), via `save_pretrained`.
"""

import jax
import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import torch  # noqa: E402
import transformers  # noqa: E402

from bigvl import convert  # noqa: E402
from bigvl.convert import hf_vit  # noqa: E402

TOL = 1e-5
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8)


def run_bigvl(model, params, images_nchw):
  with jax.default_matmul_precision("highest"):
    out, extras = jax.jit(lambda p, x: model.apply({"params": p}, x))(
        params, images_nchw.transpose(0, 2, 3, 1))
  return np.asarray(out), np.asarray(extras["tokens"])


def convert_ref(ref, tmp_path):
  torch.manual_seed(0)
  testing.randomize_(ref)
  ref.eval().save_pretrained(tmp_path / "hf")
  return convert.load_converted(
      convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "bigvl"), progress=lambda _: None))


def images_for(cfg, n=3):
  return np.random.default_rng(0).standard_normal(
      (n, 3, cfg.image_size, cfg.image_size)).astype(np.float32)


def check_vit_model(cfg, tmp_path):
  torch.manual_seed(0)
  ref = transformers.ViTModel(cfg)
  model, params = convert_ref(ref, tmp_path)
  images = images_for(cfg)
  with torch.no_grad():
    want = ref(pixel_values=torch.from_numpy(images))
  pooled, tokens = run_bigvl(model, params, images)
  assert testing.max_abs_diff(pooled, want.pooler_output.numpy()) <= TOL
  assert testing.max_abs_diff(tokens, want.last_hidden_state.numpy()) <= 10 * TOL


@pytest.mark.unit
def test_tiny_vit_model_matches_hf(tmp_path):
  check_vit_model(transformers.ViTConfig(**TINY), tmp_path)


@pytest.mark.unit
def test_tiny_vit_classifier_matches_hf(tmp_path):
  cfg = transformers.ViTConfig(**dict(TINY, num_hidden_layers=1), num_labels=10)
  torch.manual_seed(0)
  ref = transformers.ViTForImageClassification(cfg)
  model, params = convert_ref(ref, tmp_path)
  images = images_for(cfg)
  with torch.no_grad():
    want = ref(pixel_values=torch.from_numpy(images)).logits.numpy()
  logits, _ = run_bigvl(model, params, images)
  assert logits.shape == (3, 10)
  assert testing.max_abs_diff(logits, want) <= TOL


@pytest.mark.unit
def test_pre_transformers5_names_are_renamed():
  # Checkpoints on the Hub still use the old names; they must land on the same rules.
  old = ["vit.encoder.layer.3.attention.attention.query.weight",
         "vit.encoder.layer.3.attention.output.dense.bias",
         "vit.encoder.layer.3.intermediate.dense.weight",
         "vit.encoder.layer.3.output.dense.weight", "vit.layernorm.weight", "classifier.bias"]
  new = ["layers.3.attention.q_proj.weight", "layers.3.attention.o_proj.bias",
         "layers.3.mlp.fc1.weight", "layers.3.mlp.fc2.weight", "layernorm.weight",
         "classifier.bias"]
  assert list(hf_vit.normalize(dict.fromkeys(old, 0))) == new


@pytest.mark.integration
@pytest.mark.slow
def test_vit_b16_matches_hf(tmp_path):
  # ViTConfig's defaults are ViT-B/16 at 224px (86M parameters with the pooler).
  check_vit_model(transformers.ViTConfig(), tmp_path)
