"""Parameter counts of the MAE and SimMIM paper configs against the reference models of the
same name, built from their configs with random weights on torch's "meta" device (nothing is
allocated; bigvl's side through `jax.eval_shape`).

Tolerance: exact, after subtracting the reference's parameters that bigvl's models do not
have, each named below:
  - MAE (HF ViTMAEForPreTraining): `vit.embeddings.cls_token` (bigvl's MAE encoder has no class
    token), and the fixed sin-cos `vit.embeddings.position_embeddings` and
    `decoder.decoder_pos_embed`, which HF stores as frozen Parameters (requires_grad=False)
    and bigvl computes on the fly.
  - MAE fine-tune / linear probe (HF ViTForImageClassification, and timm vit_base_patch16_224
    with MAE's global pooling + fc_norm): the class token and the learned position embeddings
    of 197 positions (bigvl's classifier keeps the MAE encoder's fixed sin-cos ones and pools
    the mean token, without a class token).
  - SimMIM (HF ViTForMaskedImageModeling, encoder_stride 16, so its 1x1-conv decoder is
    bigvl's linear `pred`): the class token and its position embedding (one row of 768).
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import timm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bigvl import config_lib, models  # noqa: E402

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (hidden, layers, heads, mlp) of the MAE paper's encoders.
VIT = {"B": (768, 12, 12, 3072), "L": (1024, 24, 16, 4096)}


def _model_cfg(rel: str, arg: str = "") -> dict:
  path = os.path.join(ROOT, rel) + ":" + ",".join(a for a in (arg, "data_dir=/x") if a)
  return config_lib.load_config_file(path).model.to_dict()


def _params(model_cfg: dict, res: int = 224) -> dict:
  """{path: shape} of the model's params, from an abstract init."""
  model = models.build(model_cfg)
  image = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          image)
  flat = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(shapes["params"]))
  return {"/".join(str(k.key) for k in path): tuple(x.shape) for path, x in flat}


def _count(shapes: dict) -> int:
  return sum(int(np.prod(s)) for s in shapes.values())


def _torch(build):
  with torch.device("meta"):
    return build()


def _torch_count(module) -> int:
  return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size,rel", [("B", "configs/mae/b16.py"), ("L", "configs/mae/l16.py")])
def test_mae_pretrain_param_count_equals_hf_vitmae(size, rel):
  hidden, layers, heads, mlp = VIT[size]
  cfg = _model_cfg(rel)
  # The paper's decoder: 8 blocks, width 512, 16 heads (HF's ViTMAEConfig defaults too).
  assert (cfg["decoder_depth"], cfg["decoder_width"], cfg["decoder_heads"],
          cfg["decoder_mlp_dim"]) == (8, 512, 16, 2048)
  ref = _torch(lambda: transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
      hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
      intermediate_size=mlp, decoder_hidden_size=512, decoder_num_hidden_layers=8,
      decoder_num_attention_heads=16, decoder_intermediate_size=2048, mask_ratio=0.75,
      norm_pix_loss=True)))
  named = dict(ref.named_parameters())
  not_in_bigvl = ["vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
                  "decoder.decoder_pos_embed"]
  assert not named["vit.embeddings.position_embeddings"].requires_grad
  assert not named["decoder.decoder_pos_embed"].requires_grad
  expected = _torch_count(ref) - sum(named[k].numel() for k in not_in_bigvl)
  assert _count(_params(cfg)) == expected


def _classifier_references(size: str) -> list[int]:
  """HF ViTForImageClassification and timm's ViT with MAE's fine-tuning head, less the class
  token and the learned position embeddings."""
  hidden, layers, heads, mlp = VIT[size]
  hf = _torch(lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
      hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
      intermediate_size=mlp, num_labels=1000)))
  name = {"B": "vit_base_patch16_224", "L": "vit_large_patch16_224"}[size]
  tm = _torch(lambda: timm.create_model(name,
                                        pretrained=False, num_classes=1000, global_pool="avg",
                                        fc_norm=True))
  out = []
  for ref, cls, pos in ((hf, "vit.embeddings.cls_token", "vit.embeddings.position_embeddings"),
                        (tm, "cls_token", "pos_embed")):
    named = dict(ref.named_parameters())
    assert tuple(named[pos].shape) == (1, 197, hidden)
    out.append(_torch_count(ref) - named[cls].numel() - named[pos].numel())
  return out


@pytest.mark.parametrize("rel", ["configs/mae/finetune_b16.py", "configs/mae/linprobe_b16.py"])
@pytest.mark.parametrize("size", ["B", "L"])
def test_mae_classifier_param_count_equals_hf_and_timm(rel, size):
  n = _count(_params(_model_cfg(rel, size)))
  hf, tm = _classifier_references(size)
  assert n == hf == tm


@pytest.mark.parametrize("rel", ["configs/mae/finetune_b16.py", "configs/mae/linprobe_b16.py"])
@pytest.mark.parametrize("size,pretrain", [("B", "configs/mae/b16.py"),
                                           ("L", "configs/mae/l16.py")])
def test_mae_classifier_loads_the_pretrained_encoder(rel, size, pretrain):
  """init_subtree="enc" fills every classifier param but the new head (and fine-tuning's
  fc_norm), by path and shape; the probe freezes all but the head."""
  cfg = config_lib.load_config_file(os.path.join(ROOT, rel) + f":{size},data_dir=/x")
  assert cfg.init_subtree == "enc"
  enc = {k[len("enc/"):]: v for k, v in _params(_model_cfg(pretrain)).items()
         if k.startswith("enc/")}
  clf = _params(cfg.model.to_dict())
  new = {k for k in clf if k not in enc or enc[k] != clf[k]}
  assert new == {"head/kernel", "head/bias"} | (
      {"post_norm/scale", "post_norm/bias"} if "finetune" in rel else set()), new
  if "linprobe" in rel:
    import re
    frozen = re.compile(cfg.optimizer.frozen_pattern)
    assert {k for k in clf if not frozen.fullmatch(k)} == {"head/kernel", "head/bias"}


def test_simmim_param_count_equals_hf_vit_for_masked_image_modeling():
  cfg = _model_cfg("configs/simmim/b16.py")
  ref = _torch(lambda: transformers.ViTForMaskedImageModeling(transformers.ViTConfig(
      hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
      encoder_stride=16)))
  named = dict(ref.named_parameters())
  # HF's decoder: a 1x1 conv to 16*16*3 channels (then pixel shuffle) = bigvl's linear `pred`.
  assert tuple(named["decoder.0.weight"].shape) == (16 * 16 * 3, 768, 1, 1)
  expected = (_torch_count(ref) - named["vit.embeddings.cls_token"].numel()
              - named["vit.embeddings.position_embeddings"][:, :1].numel())
  shapes = _params(cfg)
  assert shapes["pred/kernel"] == (768, 16 * 16 * 3)
  assert _count(shapes) == expected
  # The encoder alone against HF ViTModel (no pooler; its mask token is SimMIM's).
  enc = _torch(lambda: transformers.ViTModel(transformers.ViTConfig(), add_pooling_layer=False,
                                             use_mask_token=True))
  assert _count({k: v for k, v in shapes.items() if k.startswith("enc/")}) == (
      _torch_count(enc) - 768 - 768)
