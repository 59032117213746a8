"""Model registry: `config.model.name` -> a Flax linen module class."""

from bigvl.registry import Registry
from bigvl.models.captioner import Captioner, CoCa
from bigvl.models.dino import Dino
from bigvl.models.flamingo import Flamingo
from bigvl.models.lm import CausalLM
from bigvl.models.masked_image import MAE, SimMIM
from bigvl.models.text import TextTransformer
from bigvl.models.two_towers import TwoTowers
from bigvl.models.vit import ViT

MODELS = Registry("model")
MODELS.register("vit")(ViT)
MODELS.register("text")(TextTransformer)
MODELS.register("two_towers")(TwoTowers)
MODELS.register("captioner")(Captioner)
MODELS.register("coca")(CoCa)
MODELS.register("mae")(MAE)
MODELS.register("simmim")(SimMIM)
MODELS.register("dino")(Dino)
MODELS.register("lm")(CausalLM)
MODELS.register("flamingo")(Flamingo)


def build(model_cfg) -> "nn.Module":
  """Builds the module named `model_cfg.name` with the remaining keys as its options."""
  cfg = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  if "name" not in cfg:
    raise ValueError("config.model.name is not set; valid: " + ", ".join(MODELS.names()))
  name = cfg.pop("name")
  cfg = _resolve_dtypes(cfg)
  return MODELS.build(name, **cfg)


def _resolve_dtypes(cfg):
  """`dtype: "bfloat16"` anywhere in a model config -> the jnp dtype (compute dtype; params
  stay float32)."""
  import jax.numpy as jnp
  out = {}
  for k, v in cfg.items():
    if isinstance(v, dict):
      v = _resolve_dtypes(v)
    elif k == "dtype" and isinstance(v, str):
      try:
        v = jnp.dtype(v)
      except TypeError as e:
        raise ValueError(f"Unknown model dtype {v!r}; use float32 or bfloat16.") from e
    out[k] = v
  return out
