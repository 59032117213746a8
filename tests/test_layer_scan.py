"""Layer scan: a scanned encoder computes what the unscanned one does, with the same params
converted (stacked / unstacked), both ways; checkpoints of one layout load into the other."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl import checkpoint
from bigvl.models import layer_scan, layers
from bigvl.models.text import TextTransformer
from bigvl.models.vit import ViT
from bigvl.optim import path_str

pytestmark = pytest.mark.unit


def _flat(params) -> dict:
  return {path_str(p): np.asarray(x) for p, x in
          jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]}


def _nest(flat: dict) -> dict:
  out: dict = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(value)
  return out


VIT = dict(width=32, depth=3, mlp_dim=64, num_heads=4, patch_size=4, pool="map")


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_vit_equals_unscanned_with_converted_params(remat):
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
  plain, scanned = ViT(**VIT, remat=remat), ViT(**VIT, remat=remat, scan_layers=True)
  p_plain = _flat(plain.init(jax.random.PRNGKey(0), images)["params"])
  p_scan = _flat(scanned.init(jax.random.PRNGKey(1), images)["params"])
  assert "encoder/blocks/block/attn/query/kernel" in p_scan
  assert p_scan["encoder/blocks/block/attn/query/kernel"].shape == (3, 32, 4, 8)
  assert "encoder/block2/mlp/fc1/kernel" in p_plain

  stacked = layer_scan.match_layout(p_plain, p_scan)
  assert set(stacked) == set(p_scan)
  out_plain, _ = plain.apply({"params": _nest(p_plain)}, images)
  out_scan, _ = scanned.apply({"params": _nest(stacked)}, images)
  np.testing.assert_allclose(out_scan, out_plain, atol=1e-5, rtol=1e-5)

  # And back: the unstacked params are exactly the originals.
  back = layer_scan.match_layout(stacked, p_plain)
  assert set(back) == set(p_plain)
  for k in p_plain:
    np.testing.assert_array_equal(back[k], p_plain[k])


def test_scanned_text_tower_with_padding_mask_and_gradients():
  tokens = jnp.asarray([[5, 6, 7, 0, 0], [3, 4, 0, 0, 0]])
  kw = dict(vocab_size=16, width=32, depth=2, mlp_dim=64, num_heads=4, max_len=5, mask_pad=True)
  plain, scanned = TextTransformer(**kw), TextTransformer(**kw, scan_layers=True)
  p_plain = _flat(plain.init(jax.random.PRNGKey(0), tokens)["params"])
  p_scan = layer_scan.match_layout(p_plain, _flat(scanned.init(jax.random.PRNGKey(0),
                                                               tokens)["params"]))
  # A random projection: sum(out**2) would be constant after the final LayerNorm (its
  # gradient pure rounding noise).
  r = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32)), jnp.float32)
  loss = lambda model: lambda p: jnp.sum(model.apply({"params": p}, tokens)[0] * r)
  v1, g1 = jax.value_and_grad(loss(plain))(_nest(p_plain))
  v2, g2 = jax.value_and_grad(loss(scanned))(_nest(p_scan))
  np.testing.assert_allclose(v2, v1, rtol=1e-5)
  g1 = layer_scan.match_layout(_flat(g1), p_scan)
  # float32 rounding of another summation order (loop vs unrolled): on this machine's
  # jax/XLA one element of 160 differs by 1.5e-5 (rel 3e-4); a layout bug differs by O(1).
  for k, g in _flat(g2).items():
    np.testing.assert_allclose(g, g1[k], atol=5e-5, rtol=1e-4, err_msg=k)


def test_merge_params_loads_either_layout():
  images = jnp.zeros((1, 16, 16, 3))
  scanned = ViT(**VIT, scan_layers=True)
  target = scanned.init(jax.random.PRNGKey(3), images)["params"]
  source = _flat(ViT(**VIT).init(jax.random.PRNGKey(4), images)["params"])
  merged, report = checkpoint.merge_params(target, source)
  assert not report["new"] and not report["mismatched"] and not report["dropped"]
  got = _flat(merged)
  np.testing.assert_array_equal(got["encoder/blocks/block/mlp/fc2/kernel"][1],
                                source["encoder/block1/mlp/fc2/kernel"])


def test_stacking_needs_every_block():
  flat = {"enc/block0/w": np.zeros(2), "enc/block2/w": np.zeros(2)}
  with pytest.raises(ValueError, match=r"blocks \[0, 2\] are not 0..2"):
    layer_scan.stack_layers(flat, ["enc"])
  # Encoders already in the target's layout, and other params, pass through untouched.
  same = {"enc/blocks/block/w": np.zeros((3, 2)), "head/w": np.ones(1)}
  assert layer_scan.match_layout(same, same) == same


def test_scanned_param_axes_name_the_layers_axis():
  # The stacked axis is logical `layers`: no rule maps it, so it is never split.
  boxed = ViT(**VIT, scan_layers=True).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  spec = nn.get_partition_spec(boxed)["params"]["encoder"]["blocks"]["block"]["mlp"]["fc1"]
  assert tuple(spec["kernel"]) == (layers.LAYERS, "embed", "mlp")
