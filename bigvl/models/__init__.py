"""Models: `config.model.name` -> a Flax linen module class, built with the section's other keys.

Each model module registers its classes with `@MODELS.register("name")` (bigvl/registry.py);
this package is MODELS' list of those modules: importing it registers them all.
"""

from bigvl.registry import MODELS, config_dict

# The model modules, one line each (a new model file adds its line here).
from bigvl.models import captioner  # noqa: F401,E402  (captioner, coca)
from bigvl.models import dino  # noqa: F401,E402  (dino)
from bigvl.models import flamingo  # noqa: F401,E402  (flamingo)
from bigvl.models import lm  # noqa: F401,E402  (lm)
from bigvl.models import masked_image  # noqa: F401,E402  (mae, simmim)
from bigvl.models import siglip2  # noqa: F401,E402  (siglip2: two towers + distillation heads)
from bigvl.models import text  # noqa: F401,E402  (text)
from bigvl.models import two_towers  # noqa: F401,E402  (two_towers)
from bigvl.models import vit  # noqa: F401,E402  (vit)


def build(model_cfg) -> "nn.Module":
  """Builds the module named `model_cfg.name` with the remaining keys as its options."""
  return MODELS.build_from_config(_resolve_dtypes(config_dict(model_cfg, "config.model")),
                                  where="config.model")


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
