"""The CLIP, LiT and FLIP paper configs build the models of their references.

Each model is taken from its config file (loaded as `bigvl.train` would, with only a data
directory given) and counted without allocating (`jax.eval_shape`); each reference is built
from its own config with random weights on torch's "meta" device. Tolerance: exact, except
where a named parameter the two layouts do not share is added or taken out (said at the test).
"""

import os

import numpy as np
import pytest

from bigvl import config_lib
from bigvl.convert import bigvl_io, testing

testing.import_torch_references()

import open_clip  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(rel: str, arg: str = "data_dir=/x"):
  return config_lib.load_config_file(os.path.join(ROOT, rel) + ":" + arg)


def _params(config, image_size: int, text_len: int) -> dict:
  return bigvl_io.abstract_params(config.model.to_dict(),
                                  dict(image_size=image_size, text_len=text_len))


def _count(params: dict, prefix: str = "") -> int:
  return sum(int(np.prod(s)) for k, s in params.items() if k.startswith(prefix))


def _torch_params(build):
  with torch.device("meta"):
    module = build()
  return module


def _torch_count(module, trainable_only: bool = False) -> int:
  return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# setting file -> (open_clip model name, HF CLIPConfig of the same model).
CLIP = {
    "b32": ("ViT-B-32", dict(vision_config=dict(patch_size=32))),
    "b16": ("ViT-B-16", dict(vision_config=dict(patch_size=16))),
    "l14": ("ViT-L-14", dict(
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, patch_size=14),
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
        projection_dim=768)),
}


@pytest.mark.parametrize("setting", sorted(CLIP))
def test_clip_config_param_count_equals_open_clip_and_hf(setting):
  name, hf_cfg = CLIP[setting]
  n = _count(_params(_config(f"configs/clip/{setting}.py"), 224, 77))
  oc = _torch_count(_torch_params(lambda: open_clip.CLIP(**open_clip.get_model_config(name))))
  hf = _torch_count(_torch_params(
      lambda: transformers.CLIPModel(transformers.CLIPConfig(**hf_cfg))))
  assert n == oc == hf, (setting, n, oc, hf)


def test_clip_weight_decay_set_is_open_clips():
  """open_clip decays every parameter of >= 2 dims except norms, biases and the logit scale;
  the config's wd_pattern picks the same number of weights in bigvl's tree."""
  config = _config("configs/clip/b32.py")
  import re
  pattern = re.compile(config.optimizer.wd_pattern)
  decayed = sum(int(np.prod(s)) for k, s in _params(config, 224, 77).items()
                if pattern.fullmatch(k))
  ref = _torch_params(lambda: open_clip.CLIP(**open_clip.get_model_config("ViT-B-32")))
  excluded = lambda n, p: (p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n
                           or "logit_scale" in n)
  assert decayed == sum(p.numel() for n, p in ref.named_parameters() if not excluded(n, p))


def test_lit_config_towers_equal_hf_vit_and_a_clip_text_tower():
  """LiT B/16: the locked image tower is HF ViTModel B/16 (what `init=` is converted from;
  no pooler); the from-scratch text tower has the shapes of HF CLIPTextModelWithProjection at
  LiT's sizes (16,000 pieces, 16 tokens, 768 wide, head 768) plus the bias of its head (768:
  big_vision's text head has one, CLIP's text_projection not), and the temperature (1)."""
  params = _params(_config("configs/lit/lit_b16.py"), 224, 16)
  vit = _torch_count(_torch_params(
      lambda: transformers.ViTModel(transformers.ViTConfig(), add_pooling_layer=False)))
  text = _torch_count(_torch_params(lambda: transformers.CLIPTextModelWithProjection(
      transformers.CLIPTextConfig(vocab_size=16_000, max_position_embeddings=16,
                                  hidden_size=768, intermediate_size=3072,
                                  num_attention_heads=12, num_hidden_layers=12,
                                  projection_dim=768))))
  assert _count(params, "img/") == vit == 85_798_656
  assert _count(params, "txt/") == text + 768
  assert _count(params) == vit + text + 768 + 1


def test_lit_config_locks_exactly_the_image_tower():
  import re
  config = _config("configs/lit/lit_b16.py")
  frozen = re.compile(config.optimizer.frozen_pattern)
  keys = list(_params(config, 224, 16))
  assert all(bool(frozen.fullmatch(k)) == k.startswith("img/") for k in keys)
  assert config.init_into == "img" and config.init_from.startswith("MISSING")
  assert _config("configs/lit/lit_b16.py", "init=/ckpt,data_dir=/x").init_from == "/ckpt"
  assert _config("configs/lit/lit_b16.py", "smoke").init_from == ""


def test_flip_config_param_count_equals_open_clip_with_flips_towers():
  """FLIP L/16 against open_clip's CLIP built with the towers of FLIP's code (models_flip.py:
  ViT-L/16 with fixed sin-cos positions, mean-pooled, no ln_pre; text 768 x 12 layers x 12
  heads, bidirectional, pooled at its first token, 30,523 pieces, 32 tokens; 768-wide
  projections without bias). Counted: trainable parameters (open_clip's sin-cos table is a
  frozen Parameter). Named differences: open_clip has a class embedding (1,024) that bigvl's
  mean-pooled ViT lacks, and bigvl has the patch-embedding bias (1,024) of FLIP's code that
  open_clip's conv1 lacks."""
  params = _params(_config("configs/flip/l16.py"), 224, 32)
  ref = _torch_params(lambda: open_clip.CLIP(
      embed_dim=768,
      vision_cfg=dict(image_size=224, layers=24, width=1024, patch_size=16,
                      pos_embed_type="sin_cos_2d", pool_type="avg", no_ln_pre=True),
      text_cfg=dict(context_length=32, vocab_size=30_523, width=768, heads=12, layers=12,
                    no_causal_mask=True, pool_type="first")))
  class_embedding = ref.visual.class_embedding.numel()
  assert ref.visual.conv1.bias is None and "img/embedding/bias" in params
  expected = _torch_count(ref, trainable_only=True) - class_embedding + 1024
  assert _count(params) == expected == 412_997_377


def test_flip_phases_follow_the_code_schedule():
  pre = _config("configs/flip/l16.py")
  assert (pre.batch_size, pre.total_steps, pre.optimizer.warmup_steps) == (65_536, 190_000, 760)
  assert pre.optimizer.lr == pytest.approx(4e-6 * 65_536 / 256)
  assert pre.objective.image_mask_ratio == 0.5 and not pre.init_from
  tune = _config("configs/flip/l16.py", "phase=tune,init=/w,data_dir=/x")
  assert (tune.total_steps, tune.optimizer.warmup_steps) == (1_900, 380)
  assert tune.optimizer.lr == pytest.approx(4e-8 * 65_536 / 256)
  assert tune.objective.image_mask_ratio == 0.0 and tune.init_from == "/w"
  assert tune.data.tokenizer == os.path.join("/w", "tokenizer.model")
  with pytest.raises(config_lib.ConfigError, match="init="):
    _config("configs/flip/l16.py", "phase=tune,data_dir=/x")
  with pytest.raises(config_lib.ConfigError, match="phase"):
    _config("configs/flip/l16.py", "phase=finetune,data_dir=/x")
