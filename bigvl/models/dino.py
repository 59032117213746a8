"""DINO (Caron et al. 2021): a ViT backbone with a projection head that ends in a
weight-normalised layer.

The model is the student network alone (params `student/...`). The EMA teacher is the same
network with other params, and those, with the output centre, are the `dino` objective's
state (`TrainState.objective_state`: `teacher` has the student's tree, `center` (out_dim,)),
never params: the optimizer and the weight-decay / freeze regexes never see them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bigvl import sharding as sh
from bigvl.models import layers
from bigvl.models.vit import ViT
from bigvl.registry import MODELS, check_kwargs


class DinoHead(nn.Module):
  """(b, d) -> (b, out_dim): MLP -> bottleneck -> L2 norm -> weight-normalised linear layer
  (each output unit's weight vector has norm 1: the paper's norm_last_layer=True)."""
  out_dim: int
  hidden_dim: int = 256
  bottleneck_dim: int = 64
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda n, name: nn.Dense(
        n, dtype=self.dtype, name=name,
        kernel_init=layers.logical(nn.initializers.truncated_normal(0.02), (sh.EMBED, None)),
        bias_init=layers.logical(nn.initializers.zeros, (None,)))
    for i in range(self.num_layers - 1):
      x = nn.gelu(dense(self.hidden_dim, f"fc{i}")(x), approximate=False)
    x = dense(self.bottleneck_dim, "bottleneck")(x).astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    v = self.param("last_layer", layers.logical(nn.initializers.truncated_normal(0.02),
                                                (None, None)),
                   (self.bottleneck_dim, self.out_dim))
    w = v / jnp.maximum(jnp.linalg.norm(v, axis=0, keepdims=True), 1e-12)
    return x @ w


class DinoNet(nn.Module):
  """Backbone + head: image (b,h,w,c) -> (head output (b, out_dim), features (b, width))."""
  backbone: dict
  head: dict
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    feats, _ = ViT(**self.backbone, dtype=self.dtype, name="backbone")(image, train=train)
    return DinoHead(**self.head, dtype=self.dtype, name="head")(feats), feats


@MODELS.register("dino")
class Dino(nn.Module):
  """image (b,h,w,c) -> (b, out_dim) head outputs of the network whose params are given
  (the student's, or the teacher's from the objective state). Crops of any size go through
  the same ViT (learned position embeddings are resized; sincos2d ones are made for the
  crop's grid)."""
  backbone: dict | None = None       # ViT options; its pooled features feed the head.
  out_dim: int = 1024                # Prototypes.
  hidden_dim: int = 256
  bottleneck_dim: int = 64
  head_layers: int = 3
  dtype: Any = jnp.float32

  def setup(self):
    opts = dict(self.backbone or {})
    check_kwargs(ViT, opts, "config.model.backbone")
    if opts.get("num_classes") or opts.get("pool") == "none":
      raise ValueError("config.model.backbone must pool its tokens (pool cls | gap | map) "
                       "and have no num_classes: the DINO head takes its pooled features.")
    head = dict(out_dim=self.out_dim, hidden_dim=self.hidden_dim,
                bottleneck_dim=self.bottleneck_dim, num_layers=self.head_layers)
    self.student = DinoNet(opts, head, self.dtype)

  def __call__(self, image, *, train: bool = False, with_features: bool = False):
    """With `with_features`, (head outputs, pooled backbone features (b, width))."""
    out, feats = self.student(image, train=train)
    return (out, feats) if with_features else out

  def embed_image(self, image):
    """(b, h, w, c) -> (b, width): the backbone's pooled features. Evaluators call it with
    the teacher's params (the objective's `eval_params`): what DINO evaluates."""
    return self.student(image, train=False)[1]
