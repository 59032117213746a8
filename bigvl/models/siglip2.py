"""SigLIP 2's model: a SigLIP two-tower with the self-distillation heads of its last 20%.

The same params as `two_towers` (`img/`, `txt/`, `t`, `b`: converters, evaluators and
SigLIP-only checkpoints see a plain two-tower), plus two DINO-style heads on the image
tower that the `self_distill` objective trains (bigvl/objectives/self_distill.py):

- `global_head`: the pooled image features (b, width) -> (b, out_dim) prototype logits,
  for SILC's local-to-global consistency;
- `patch_head`: the image tower's tokens (b, n, width) -> (b, n, out_dim), for TIPS-style
  masked prediction of the teacher's patch features;

and the image tower's `mask_token`, which replaces the masked patches the student sees.
"""

from __future__ import annotations

import jax.numpy as jnp

from bigvl.models.dino import DinoHead
from bigvl.models.two_towers import TwoTowers
from bigvl.registry import MODELS

# The params the self-distillation teacher keeps an EMA of: the image tower and the heads.
TEACHER_PARAMS = ("img", "global_head", "patch_head")


@MODELS.register("siglip2")
class Siglip2(TwoTowers):
  """`two_towers` (same call, same outputs) + `distill_features`. `distill`: the heads'
  options (DinoHead: out_dim, hidden_dim, bottleneck_dim, num_layers)."""
  distill: dict | None = None

  def setup(self):
    super().setup()
    if self.image is None:
      raise ValueError("config.model.image is needed: SigLIP 2's heads read the image tower.")
    opts = dict(dict(out_dim=1024, hidden_dim=256, bottleneck_dim=64), **(self.distill or {}))
    self.global_head = DinoHead(**opts, dtype=self.dtype)
    self.patch_head = DinoHead(**opts, dtype=self.dtype)

  def __call__(self, image=None, text=None, *, train: bool = False, image_keep=None,
               image_shapes=None):
    out = super().__call__(image, text, train=train, image_keep=image_keep,
                           image_shapes=image_shapes)
    if self.is_initializing() and image is not None:   # Create the heads and the mask token.
      n = (image.shape[1] if image.ndim == 3 else
           (image.shape[1] // self.img.dims()["patch_size"]) *
           (image.shape[2] // self.img.dims()["patch_size"]))
      self.distill_features(image, mask=jnp.zeros((image.shape[0], n), bool),
                            image_shapes=image_shapes)
    return out

  def distill_features(self, image, *, mask=None, train: bool = False, image_shapes=None):
    """image (b, h, w, c) [mask (b, n) bool: patches replaced by the mask token] ->
    {"global": (b, out_dim), "patches": (b, n, out_dim)} float32 head outputs, and
    "mask" (b, n) of the real patches with NaFlex `image_shapes`."""
    kw = {} if mask is None else {"mask": mask}
    if image_shapes is not None:
      if mask is not None:
        raise ValueError("Siglip2.distill_features: masked prediction on NaFlex patches is "
                         "not supported yet; give fixed-size images.")
      kw = {"spatial_shapes": image_shapes}
    pooled, extras = self.img(image, train=train, **kw)
    out = {"global": self.global_head(pooled).astype(jnp.float32),
           "patches": self.patch_head(extras["tokens"]).astype(jnp.float32)}
    if "mask" in extras:
      out["mask"] = extras["mask"]
    return out
