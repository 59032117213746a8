"""Parameter counts of the DINO, AugReg ViT and Flamingo paper configs against their references.

Each bigvl model is built FROM ITS CONFIG FILE (configs/dino/*.py, configs/vit/augreg_b16.py,
configs/flamingo/gpt2.py) and counted with `jax.eval_shape` (nothing allocated); each
reference is built from its own config with random weights on torch's "meta" device.

Tolerance: exact, everywhere. The one named difference is DINO's last head layer: the
reference `DINOHead` wraps it in `weight_norm`, which stores `weight_v` (65536 x 256, the
counterpart of bigvl's `last_layer`) and `weight_g` (65536 x 1), a gain the release fixes at 1
and never trains with norm_last_layer=True (`requires_grad = False`); bigvl normalises each
output unit's weight to norm 1 and has no gain. So bigvl's head equals the reference head's
trainable parameters, i.e. its parameters less `weight_g`'s 65,536.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import timm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import flax.linen as nn  # noqa: E402

from bigvl import config_lib, models  # noqa: E402
from bigvl.optim import path_str  # noqa: E402
from bigvl.convert import bigvl_io  # noqa: E402

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_cfg(rel: str, arg: str = "") -> dict:
  path = os.path.join(ROOT, rel) + ":" + ",".join(a for a in (arg, "data_dir=/x") if a)
  return config_lib.load_config_file(path).model.to_dict()


def _flat_shapes(cfg: dict, *inputs) -> dict[str, tuple]:
  """{"/"-joined param path: shape} of model config `cfg` initialised on `inputs`."""
  model = models.build(cfg)
  variables = jax.eval_shape(
      lambda *xs: model.init(jax.random.PRNGKey(0), *xs, train=False), *inputs)
  flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(variables["params"]))[0]
  return {path_str(p): tuple(leaf.shape) for p, leaf in flat}


def _count(shapes: dict, prefix: str = "") -> int:
  return sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith(prefix))


def _torch_count(build) -> int:
  with torch.device("meta"):
    module = build()
  return sum(p.numel() for p in module.parameters())


# DINO ------------------------------------------------------------------------------------

HF_VIT = {"s16": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                      intermediate_size=1536),
          "b16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072)}


def dino_head_count(in_dim: int, hidden: int = 2048, bottleneck: int = 256,
                    out_dim: int = 65_536) -> int:
  """DINOHead(in_dim, out_dim, nlayers=3, hidden_dim, bottleneck_dim) of the release, without
  the frozen weight-norm gain: Linear(in, hidden) + Linear(hidden, hidden) +
  Linear(hidden, bottleneck), all biased, then the bias-free last layer (bottleneck x out)."""
  return ((in_dim * hidden + hidden) + (hidden * hidden + hidden)
          + (hidden * bottleneck + bottleneck) + bottleneck * out_dim)


def _dino_shapes(setting: str) -> dict:
  cfg = _model_cfg(f"configs/dino/{setting}.py")
  return _flat_shapes(cfg, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))


@pytest.mark.parametrize("setting", ["s16", "b16"])
def test_dino_backbone_equals_hf_vit_model(setting):
  ref = _torch_count(lambda: transformers.ViTModel(
      transformers.ViTConfig(patch_size=16, image_size=224, **HF_VIT[setting]),
      add_pooling_layer=False))
  shapes = _dino_shapes(setting)
  assert _count(shapes, "student/backbone/") == ref
  assert ref == {"s16": 21_665_664, "b16": 85_798_656}[setting]


@pytest.mark.parametrize("setting", ["s16", "b16"])
def test_dino_head_equals_the_release_head(setting):
  width = HF_VIT[setting]["hidden_size"]
  shapes = _dino_shapes(setting)
  ours = _count(shapes, "student/head/")
  assert ours == dino_head_count(width)

  def release_head():  # Built as the release's DINOHead (use_bn=False, norm_last_layer=True).
    mlp = torch.nn.Sequential(torch.nn.Linear(width, 2048), torch.nn.GELU(),
                              torch.nn.Linear(2048, 2048), torch.nn.GELU(),
                              torch.nn.Linear(2048, 256))
    last = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(256, 65_536, bias=False))
    return torch.nn.ModuleList([mlp, last])
  ref = _torch_count(release_head)
  assert ours == ref - 65_536          # weight_g: see the module docstring.
  assert shapes["student/head/last_layer"] == (256, 65_536)


# AugReg ViT-B/16 -------------------------------------------------------------------------

@pytest.mark.parametrize("stage,classes,res", [("i21k", 21_843, 224), ("i1k", 1000, 384)])
def test_augreg_b16_equals_timm(stage, classes, res):
  cfg = _model_cfg("configs/vit/augreg_b16.py", f"stage={stage}")
  ours = sum(int(np.prod(s)) for s in bigvl_io.abstract_params(
      cfg, dict(image_size=res)).values())
  # At 384px the fine-tuning model keeps the 14 x 14 position table (posemb_grid=14): the
  # same parameters as the 224px reference.
  ref = _torch_count(lambda: timm.create_model("vit_base_patch16_224", pretrained=False,
                                               num_classes=classes))
  assert ours == ref
  assert ref == {21_843: 102_595_923, 1000: 86_567_656}[classes]


# Flamingo --------------------------------------------------------------------------------

def _flamingo_shapes(arg: str = "") -> tuple[dict, dict]:
  cfg = _model_cfg("configs/flamingo/gpt2.py", arg)
  cfg = dict(cfg, image_token_id=1)   # Filled from the tokenizer by the loop.
  res = 224
  shapes = _flat_shapes(cfg, jax.ShapeDtypeStruct((1, 1, res, res, 3), jnp.float32),
                        jax.ShapeDtypeStruct((1, 16), jnp.int32))
  return cfg, shapes


@pytest.mark.parametrize("size,hf", [("large", dict(n_embd=1280, n_layer=36, n_head=20)),
                                     ("small", dict())])
def test_flamingo_lm_equals_hf_gpt2(size, hf):
  _, shapes = _flamingo_shapes(f"size={size}")
  ref = _torch_count(lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf)))
  assert _count(shapes, "lm/") == ref
  assert ref == {"large": 774_030_080, "small": 124_439_808}[size]


def test_flamingo_vision_equals_hf_siglip_so400m_vision_tower():
  so400m = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                num_attention_heads=16, patch_size=14, image_size=224)
  with torch.device("meta"):
    hf = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**so400m))
  head = sum(p.numel() for n, p in hf.named_parameters() if n.startswith("head.") or ".head." in n)
  _, shapes = _flamingo_shapes()
  # Flamingo reads every patch token: the tower without SigLIP's MAP pooling head.
  assert _count(shapes, "vision/") == sum(p.numel() for p in hf.parameters()) - head


# The DINO configs' teacher temperature warm-up (bigvl/objectives/dino.py) ----------------

def test_dino_teacher_temperature_warms_up_linearly_as_configured():
  from bigvl.objectives.dino import Dino
  c = config_lib.load_config_file(os.path.join(ROOT, "configs/dino/s16.py") + ":data_dir=/x")
  opts = {k: v for k, v in c.objective.to_dict().items() if k != "name"}
  obj = Dino(**opts)
  warm = c.objective.warmup_teacher_temp_steps
  assert warm == 30 * (1_281_167 // 1024)          # 30 epochs of 1251 steps.
  params = {"student": {"head": {"last_layer": jnp.zeros((4, 8))}}}
  state = obj.init_state(params)
  assert float(state["teacher_temp"]) == pytest.approx(0.04)
  upd = dict(center=jnp.zeros((8,)))
  temps = {}
  for step in (0, warm // 2 - 1, warm - 1, warm + 100):
    temps[step + 1] = float(obj.update_state(state, params, params, upd, step)["teacher_temp"])
  assert temps[warm // 2] == pytest.approx(0.055, abs=1e-6)
  assert temps[warm] == pytest.approx(0.07) and temps[warm + 101] == pytest.approx(0.07)
  # Without a warm-up the state has no temperature and the loss uses teacher_temp.
  assert "teacher_temp" not in Dino().init_state(params)
