"""big_vision .npz <-> bigvl: key layout, bit-exact round trips, and outputs.

big_vision cannot be imported here, so its naming is written down below as data (the keys and
shapes its models save for two tiny configs, read from big_vision's models/vit.py,
models/proj/image_text/{two_towers,text_transformer}.py), and what its models compute is
written down as a NumPy forward pass over those names (`bv_vit`, `bv_text`).
"""

import os
import re
import sys

import jax
import numpy as np
import pytest

from bigvl import models
from bigvl.convert import ConversionError, big_vision, bigvl_io, common, from_big_vision, load_meta
from bigvl.convert import testing
from bigvl.convert import from_big_vision_npz, to_big_vision
from bigvl.models import presets, two_towers
from conftest import REPO, load_tool

pytestmark = pytest.mark.unit

W, MLP, HEADS, PATCH, SIZE, VOCAB, LEN = 32, 64, 2, 8, 16, 50, 8
COMMON = dict(width=W, mlp_dim=MLP, num_heads=HEADS, act="gelu_tanh", ln_eps=1e-6)
IMAGE = dict(depth=2, patch_size=PATCH, **COMMON)
TEXT = dict(vocab_size=VOCAB, depth=1, max_len=LEN, num_classes=W, **COMMON)
VIT = dict(IMAGE, name="vit")
# big_vision's SigLIP: out_dim=(None, width), bias. LiT-style: both towers have a head, no bias.
SIGLIP = dict(name="two_towers", image=dict(IMAGE, pool="map"), text=dict(TEXT, pool="last"),
              embed_dim=None, temperature_init=10.0, bias_init=-10.0)
LIT = dict(name="two_towers", image=dict(IMAGE, pool="cls", num_classes=W),
           text=dict(TEXT, pool="gap_all"), embed_dim=None, temperature_init=10.0)
META = dict(image_size=SIZE, channels=3, text_len=LEN)

# ----------------------------------------------------------------------------- the layout


def attention_keys(at):
  """flax's MultiHeadDotProductAttention of width 32, 2 heads: per-head q/k/v kernels
  (D, heads, head_dim), out kernel (heads, head_dim, D)."""
  return [(f"{at}/{name}/kernel", (32, 2, 16)) for name in ("query", "key", "value")
          ] + [(f"{at}/{name}/bias", (2, 16)) for name in ("query", "key", "value")
               ] + [(f"{at}/out/kernel", (2, 16, 32)), (f"{at}/out/bias", (32,))]


def block_keys(at):
  """One encoder block (big_vision's Encoder1DBlock) of width 32, 2 heads, MLP 64."""
  return [(f"{at}/LayerNorm_0/scale", (32,)), (f"{at}/LayerNorm_0/bias", (32,)),
          *attention_keys(f"{at}/MultiHeadDotProductAttention_0"),
          (f"{at}/LayerNorm_1/scale", (32,)), (f"{at}/LayerNorm_1/bias", (32,)),
          (f"{at}/MlpBlock_0/Dense_0/kernel", (32, 64)), (f"{at}/MlpBlock_0/Dense_0/bias", (64,)),
          (f"{at}/MlpBlock_0/Dense_1/kernel", (64, 32)), (f"{at}/MlpBlock_0/Dense_1/bias", (32,))]


def map_head_keys(at):
  """big_vision's MAPHead (width 32, 2 heads, MLP 64): a probe attends, then LN and MLP."""
  return [(f"{at}/probe", (1, 1, 32)), *attention_keys(f"{at}/MultiHeadDotProductAttention_0"),
          (f"{at}/LayerNorm_0/scale", (32,)), (f"{at}/LayerNorm_0/bias", (32,)),
          (f"{at}/MlpBlock_0/Dense_0/kernel", (32, 64)), (f"{at}/MlpBlock_0/Dense_0/bias", (64,)),
          (f"{at}/MlpBlock_0/Dense_1/kernel", (64, 32)), (f"{at}/MlpBlock_0/Dense_1/bias", (32,))]


# vit.Model(num_classes=10, variant-less width 32, depth 2, patch 8, pool_type="map",
# rep_size=24) on 16x16x3 images.
BV_VIT_KEYS = ([("embedding/kernel", (8, 8, 3, 32)), ("embedding/bias", (32,)),
                ("pos_embedding", (1, 4, 32))]
               + block_keys("Transformer/encoderblock_0")
               + block_keys("Transformer/encoderblock_1")
               + [("Transformer/encoder_norm/scale", (32,)),
                  ("Transformer/encoder_norm/bias", (32,))]
               + map_head_keys("MAPHead_0")
               + [("pre_logits/kernel", (32, 24)), ("pre_logits/bias", (24,)),
                  ("head/kernel", (24, 10)), ("head/bias", (10,))])
BV_VIT_CFG = dict(VIT, pool="map", rep_size=24, num_classes=10)

# two_towers.Model(out_dim=(None, 32), bias_init=-10): SigLIP, image pool_type="map" without a
# head, text_transformer (vocab 50, depth 1) on 8 tokens with its head.
BV_SIGLIP_KEYS = ([("img/embedding/kernel", (8, 8, 3, 32)), ("img/embedding/bias", (32,)),
                   ("img/pos_embedding", (1, 4, 32))]
                  + block_keys("img/Transformer/encoderblock_0")
                  + block_keys("img/Transformer/encoderblock_1")
                  + [("img/Transformer/encoder_norm/scale", (32,)),
                     ("img/Transformer/encoder_norm/bias", (32,))]
                  + map_head_keys("img/MAPHead_0")
                  + [("txt/Embed_0/embedding", (50, 32)), ("txt/pos_embedding", (1, 8, 32))]
                  + block_keys("txt/Encoder_0/encoderblock_0")
                  + [("txt/Encoder_0/encoder_norm/scale", (32,)),
                     ("txt/Encoder_0/encoder_norm/bias", (32,)),
                     ("txt/head/kernel", (32, 32)), ("txt/head/bias", (32,)),
                     ("t", (1,)), ("b", (1,))])


def random_state(keys, seed=0):
  """Random big_vision arrays for `keys`: LayerNorm scales ~1, everything else ~0."""
  rng = np.random.default_rng(seed)
  return {k: (rng.normal(0, 0.2, s) + k.endswith("/scale")).astype(np.float32) for k, s in keys}


def assert_same_arrays(got, want):
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


@pytest.mark.parametrize("keys,cfg", [(BV_VIT_KEYS, BV_VIT_CFG), (BV_SIGLIP_KEYS, SIGLIP)],
                         ids=["vit", "siglip"])
def test_key_layout_is_big_vision_s(keys, cfg):
  written = to_big_vision(testing.random_params(cfg, META), cfg, prefix=False)
  assert [(k, v.shape) for k, v in written.items()] == sorted(keys)
  state = random_state(keys)
  assert_same_arrays(to_big_vision(from_big_vision(state, cfg), cfg, prefix=False), state)


# ----------------------------------------------------------------------------- round trips

VARIANTS = {
    "map": dict(VIT, pool="map"),
    "gap_sincos_head": dict(VIT, pool="gap", posemb="sincos2d", num_classes=10),
    "tok_head_pre_logits": dict(VIT, pool="cls", rep_size=24, num_classes=10),
    "tok_old_posemb": dict(VIT, pool="cls", cls_posemb=True, rep_size=24),
    "first_pre_logits": dict(VIT, pool="first", rep_size=24),
    "siglip": SIGLIP,
    "lit": LIT,
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_npz_to_bigvl_to_npz_is_bit_identical(name, tmp_path):
  cfg = VARIANTS[name]
  original = to_big_vision(testing.random_params(cfg, META, seed=1), cfg, prefix=False)
  params = None
  for scanned in (False, True):
    for prefix in (False, True):
      want = big_vision.stack_blocks(original) if scanned else original
      want = {("params/" if prefix else "") + k: v for k, v in want.items()}
      path = str(tmp_path / f"{scanned}-{prefix}.npz")
      np.savez(path, **want)
      got = from_big_vision(path, cfg)
      assert_same_arrays(to_big_vision(got, cfg, scanned=scanned, prefix=prefix), want)
      if params is not None:  # The same params, whatever the file's layout.
        assert_same_arrays(common.flatten(got), params)
      params = common.flatten(got)


def test_scanned_bigvl_model_converts_both_ways():
  cfg = dict(SIGLIP, image=dict(SIGLIP["image"], scan_layers=True),
             text=dict(SIGLIP["text"], scan_layers=True))
  state = random_state(BV_SIGLIP_KEYS)
  params = common.flatten(from_big_vision(state, cfg))
  assert params["img/encoder/blocks/block/ln1/scale"].shape == (2, W)
  np.testing.assert_array_equal(params["img/encoder/blocks/block/ln1/scale"][1],
                                state["img/Transformer/encoderblock_1/LayerNorm_0/scale"])
  assert_same_arrays(to_big_vision(params, cfg, prefix=False), state)


def test_image_tower_of_a_two_tower_file(tmp_path):
  state = random_state(BV_SIGLIP_KEYS)
  path = str(tmp_path / "siglip.npz")
  np.savez(path, **{f"params/{k}": v for k, v in state.items()})
  vit = dict(SIGLIP["image"], name="vit")
  params = common.flatten(from_big_vision(f"{path}:img", vit))
  np.testing.assert_array_equal(params["map_head/probe"], state["img/MAPHead_0/probe"])
  with pytest.raises(ConversionError, match=r"two-tower one.*FILE.npz:img"):
    from_big_vision(path, vit)


def test_original_vit_code_names_are_read():
  """AugReg / original ViT checkpoints: modules numbered across types, position table under
  Transformer/posembed_input, with a row for the class token."""
  cfg = dict(VIT, pool="cls", cls_posemb=True, num_classes=10)
  state = to_big_vision(testing.random_params(cfg, META), cfg, prefix=False)
  renames = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
             "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
  old = {}
  for k, v in state.items():
    for new_name, old_name in renames.items():
      k2 = k.replace(f"/{new_name}/", f"/{old_name}/")
      if k2 != k:
        k = k2
        break
    old["Transformer/posembed_input/pos_embedding" if k == "pos_embedding" else k] = v
  assert "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel" in old
  assert_same_arrays(to_big_vision(from_big_vision(old, cfg), cfg, prefix=False), state)


def test_bfloat16_arrays_are_read_as_float32(tmp_path):
  import ml_dtypes
  state = random_state(BV_VIT_KEYS)
  path = str(tmp_path / "bf16.npz")
  np.savez(path, **{k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()})
  params = common.flatten(from_big_vision(path, BV_VIT_CFG))
  want = state["head/kernel"].astype(ml_dtypes.bfloat16).astype(np.float32)
  assert params["head/kernel"].dtype == np.float32
  np.testing.assert_array_equal(params["head/kernel"], want)


# ----------------------------------------------------------------------------- big_vision's outputs


def ln(x, p):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * p["scale"] + p["bias"]


def dense(x, p):
  return x @ p["kernel"] + p["bias"]


def mlp(x, p):  # flax nn.gelu: the tanh approximation.
  h = dense(x, p["Dense_0"])
  h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
  return dense(h, p["Dense_1"])


def attention(xq, xkv, p):
  q, k, v = (np.einsum("bld,dhk->blhk", x, p[n]["kernel"]) + p[n]["bias"]
             for x, n in ((xq, "query"), (xkv, "key"), (xkv, "value")))
  s = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
  a = np.exp(s - s.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  o = np.einsum("bhqs,bshk->bqhk", a, v)
  return np.einsum("bqhk,hkd->bqd", o, p["out"]["kernel"]) + p["out"]["bias"]


def encoder(x, p):
  for i in range(len([k for k in p if k.startswith("encoderblock_")])):
    b = p[f"encoderblock_{i}"]
    y = ln(x, b["LayerNorm_0"])
    x = x + attention(y, y, b["MultiHeadDotProductAttention_0"])
    x = x + mlp(ln(x, b["LayerNorm_1"]), b["MlpBlock_0"])
  return ln(x, p["encoder_norm"])


def map_head(x, p):
  probe = np.tile(p["probe"], (x.shape[0], 1, 1))
  x = attention(probe, x, p["MultiHeadDotProductAttention_0"])
  return (x + mlp(ln(x, p["LayerNorm_0"]), p["MlpBlock_0"]))[:, 0]


def sincos2d(h, w, width):  # MoCo v3, as big_vision's posemb_sincos_2d.
  y, x = np.mgrid[:h, :w]
  omega = 1.0 / 10_000 ** (np.arange(width // 4) / (width // 4 - 1))
  y, x = np.outer(y.flatten(), omega), np.outer(x.flatten(), omega)
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None]


def bv_vit(p, image, pool_type, posemb="learn"):
  """big_vision's vit.Model: (logits if a head else pre_logits)."""
  n, s, _, c = image.shape
  k = p["embedding"]["kernel"]
  g = s // k.shape[0]
  patches = image.reshape(n, g, k.shape[0], g, k.shape[1], c).transpose(0, 1, 3, 2, 4, 5)
  x = np.einsum("nhwijc,ijcd->nhwd", patches, k).reshape(n, g * g, -1) + p["embedding"]["bias"]
  x = x + (p["pos_embedding"] if posemb == "learn" else sincos2d(g, g, x.shape[-1]))
  if pool_type == "tok":
    x = np.concatenate([np.tile(p["cls"], (n, 1, 1)), x], axis=1)
  x = encoder(x, p["Transformer"])
  x = {"map": lambda: map_head(x, p.get("MAPHead_0")), "gap": lambda: x.mean(1),
       "tok": lambda: x[:, 0], "0": lambda: x[:, 0]}[pool_type]()
  if "pre_logits" in p:
    x = np.tanh(dense(x, p["pre_logits"]))
  return dense(x, p["head"]) if "head" in p else x


def bv_text(p, tokens, pool_type):
  """big_vision's text_transformer.Model: the head's output."""
  x = p["Embed_0"]["embedding"][tokens] + p["pos_embedding"][:, :tokens.shape[1]]
  x = encoder(x, p["Encoder_0"])
  x = {"last": lambda: x[:, -1], "first": lambda: x[:, 0], "gap": lambda: x.mean(1),
       "max": lambda: x.max(1), "map": lambda: map_head(x, p.get("MAPHead_0"))}[pool_type]()
  return dense(x, p["head"])


def tree64(state):
  return common.unflatten({k: np.asarray(v, np.float64) for k, v in state.items()})


def images(n=2, seed=3):
  return np.random.default_rng(seed).standard_normal((n, SIZE, SIZE, 3)).astype(np.float32)


def tokens(n=3):
  ids = testing.token_ids(n, LEN, VOCAB, eos=1, pad=0, seed=4)
  assert (ids == 0).any()  # Padding present: the all-positions pools see it.
  return ids


@pytest.mark.parametrize("pool_type,extra", [
    ("map", dict(rep_size=24, num_classes=10)), ("gap", dict(posemb="sincos2d", num_classes=10)),
    ("tok", dict(rep_size=24)), ("0", dict(num_classes=10))])
def test_vit_computes_what_big_vision_computes(pool_type, extra):
  cfg = dict(VIT, pool=big_vision.VIT_POOLS[pool_type], **extra)
  state = to_big_vision(testing.random_params(cfg, META, seed=5, scale=0.2), cfg, prefix=False)
  model = models.build(cfg)
  x = images()
  with jax.default_matmul_precision("highest"):
    out, _ = model.apply({"params": from_big_vision(state, cfg)}, x)
  want = bv_vit(tree64(state), x.astype(np.float64), pool_type, extra.get("posemb", "learn"))
  np.testing.assert_allclose(np.asarray(out), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pool_type", ["last", "first", "gap", "max", "map"])
def test_text_tower_computes_what_big_vision_computes(pool_type):
  cfg = dict(TEXT, name="text", pool=big_vision.TEXT_POOLS[pool_type])
  meta = dict(text_len=LEN)
  state = to_big_vision(testing.random_params(cfg, meta, seed=6, scale=0.2), cfg, prefix=False)
  ids = tokens()
  with jax.default_matmul_precision("highest"):
    out, _ = models.build(cfg).apply({"params": from_big_vision(state, cfg)}, ids)
  np.testing.assert_allclose(np.asarray(out), bv_text(tree64(state), ids, pool_type), atol=1e-5,
                             rtol=0)


def two_towers_outputs(cfg):
  """A jitted (params, images, ids) -> image and text embeddings, image-text logits."""
  model = models.build(cfg)

  @jax.jit
  def run(params, x, ids):
    zimg, ztxt, extras = model.apply({"params": params}, x, ids)
    return zimg, ztxt, two_towers.logits(zimg, ztxt, extras)

  def outputs(params, x, ids):
    with jax.default_matmul_precision("highest"):
      return [np.asarray(o) for o in run(params, x, ids)]
  return outputs


def test_siglip_outputs_after_a_round_trip(tmp_path):
  """bigvl model -> to_big_vision -> npz -> from_big_vision (also into scanned towers): the same
  embeddings and logits, and those big_vision's formulas give."""
  params = testing.random_params(SIGLIP, META, seed=7, scale=0.2)
  path = str(tmp_path / "siglip.npz")
  np.savez(path, **to_big_vision(params, SIGLIP))
  x, ids = images(), tokens()
  scanned = dict(SIGLIP, image=dict(SIGLIP["image"], scan_layers=True),
                 text=dict(SIGLIP["text"], scan_layers=True))
  run = two_towers_outputs(SIGLIP)
  want = run(common.unflatten(params), x, ids)
  for got in (run(from_big_vision(path, SIGLIP), x, ids),
              two_towers_outputs(scanned)(from_big_vision(path, scanned), x, ids)):
    for name, g, w in zip(("image embedding", "text embedding", "logits"), got, want):
      assert testing.max_abs_diff(g, w) <= 1e-5, name
  p = tree64({k[len("params/"):]: v for k, v in np.load(path).items()})
  zimg = bv_vit(p["img"], x.astype(np.float64), "map")
  ztxt = bv_text(p["txt"], ids, "last")
  zimg /= np.linalg.norm(zimg, axis=1, keepdims=True) + 1e-8
  ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True) + 1e-8
  logits = np.exp(p["t"]) * zimg @ ztxt.T + p["b"]
  for g, w in zip(want, (zimg, ztxt, logits)):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- new model options


def test_text_pools_over_all_positions_padding_included():
  ids = tokens()
  base = dict(TEXT, name="text", num_classes=None)
  params = common.unflatten(testing.random_params(dict(base, pool="gap_all"), dict(text_len=LEN)))
  mean, extras = models.build(dict(base, pool="gap_all")).apply({"params": params}, ids)
  top, _ = models.build(dict(base, pool="max_all")).apply({"params": params}, ids)
  x = np.asarray(extras["tokens"], np.float64)
  np.testing.assert_allclose(np.asarray(mean), x.mean(axis=1), rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(top), x.max(axis=1), rtol=0, atol=0)
  # bigvl's "gap" leaves padding out, so the two differ on a padded row (row 0).
  keep = (ids != 0)[..., None]
  assert np.abs((x * keep).sum(1) / keep.sum(1) - np.asarray(mean))[0].max() > 1e-3


def test_vit_first_pools_token_zero_without_a_class_token():
  cfg = dict(VIT, pool="first")
  params = testing.random_params(cfg, META)
  assert not any(k == "cls" for k in params)
  pooled, extras = models.build(cfg).apply({"params": common.unflatten(params)}, images())
  assert extras["tokens"].shape == (2, 4, W)
  np.testing.assert_array_equal(np.asarray(pooled), np.asarray(extras["tokens"])[:, 0])


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("change,message", [
    (dict(act="gelu"), r"config.model.image.act='gelu': .*set act='gelu_tanh'"),
    (dict(ln_eps=1e-5), r"config.model.image.ln_eps=1e-05: .*set ln_eps=1e-6"),
    (dict(pre_norm=True), r"config.model.image.pre_norm=True: .*set pre_norm=False"),
])
def test_options_big_vision_lacks_are_refused(change, message):
  cfg = dict(SIGLIP, image=dict(SIGLIP["image"], **change))
  with pytest.raises(ConversionError, match=message):
    from_big_vision(random_state(BV_SIGLIP_KEYS), cfg)


def test_masked_text_gap_is_refused_naming_gap_all():
  cfg = dict(LIT, text=dict(LIT["text"], pool="gap"))
  with pytest.raises(ConversionError, match=r"text.pool='gap'.*set pool='gap_all'"):
    to_big_vision(testing.random_params(LIT, META), cfg)


def test_shape_mismatch_names_the_big_vision_key():
  cfg = dict(SIGLIP, text=dict(SIGLIP["text"], vocab_size=60))
  with pytest.raises(ConversionError, match=r"Shape mismatch at txt/Embed_0/embedding "
                                            r"\(bigvl txt/token_embedding/embedding\)"):
    from_big_vision(random_state(BV_SIGLIP_KEYS), cfg)


@pytest.fixture(scope="module")
def cli():
  return load_tool("convert_checkpoint")


def test_command_line_both_ways_with_a_preset(cli, tmp_path, capsys):
  cfg = presets.siglip("mu/8")
  original = to_big_vision(testing.random_params(cfg, dict(image_size=16, text_len=64)), cfg)
  path = str(tmp_path / "siglip-mu.npz")
  np.savez(path, **original)
  out = str(tmp_path / "converted")
  assert cli.main(["big_vision", path, out, "--model_config", "siglip:mu/8"]) == 0
  log = capsys.readouterr().out
  assert "reading" in log and "converting" in log and "done:" in log
  meta = load_meta(out)
  assert (meta["image_size"], meta["text_len"], meta["format"]) == (16, 64, "big_vision")

  back = str(tmp_path / "back.npz")
  assert cli.main(["to_big_vision", out, back, "--scanned"]) == 0
  with np.load(back) as npz:
    assert_same_arrays(dict(npz), big_vision.stack_blocks(original))
  assert cli.main(["to_big_vision", out, back]) == 1  # Never overwrites.
  err = capsys.readouterr().err
  assert err.startswith(f"error: Output file {back} already exists") and err.count("\n") == 1


def test_image_size_comes_from_the_position_table_or_is_given(tmp_path):
  cfg = dict(VIT, posemb="sincos2d")
  path = str(tmp_path / "sincos.npz")
  np.savez(path, **to_big_vision(testing.random_params(cfg, META), cfg))
  with pytest.raises(ConversionError, match="no learned position table.*--image_size"):
    from_big_vision_npz(path, str(tmp_path / "a"), model_config=cfg, progress=lambda _: None)
  from_big_vision_npz(path, str(tmp_path / "b"), model_config=cfg, image_size=24,
                      progress=lambda _: None)
  assert load_meta(str(tmp_path / "b"))["image_size"] == 24
  learned = to_big_vision(testing.random_params(VIT, META), VIT)
  with pytest.raises(ConversionError, match=r"image_size 24 does not fit pos_embedding, learned "
                                            r"for 4 patches \(16px\).*posemb_grid=2"):
    big_vision.convert(learned, VIT, image_size=24)


def test_docs_example_runs(tmp_path, monkeypatch, capsys):
  """docs/convert.md's in-memory example, on a SigLIP "mu/8" stand-in for B/16."""
  with open(os.path.join(REPO, "docs", "convert.md")) as f:
    section = f.read().split("## big_vision", 1)[1]
  snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert 'presets.siglip("B/16")' in snippet
  snippet = snippet.replace('presets.siglip("B/16")', 'presets.siglip("mu/8")')
  cfg = presets.siglip("mu/8")
  original = to_big_vision(testing.random_params(cfg, dict(image_size=16, text_len=64)), cfg)
  monkeypatch.chdir(tmp_path)
  np.savez("webli_en_b16_224_63724782.npz", **original)
  scope = {}
  exec(compile(snippet, "docs/convert.md", "exec"), scope)
  assert capsys.readouterr().out.strip()
  probs = np.asarray(jax.nn.sigmoid(two_towers.logits(scope["zimg"], scope["ztxt"],
                                                      scope["extras"])))
  assert probs.shape == (2, 3) and ((probs > 0) & (probs < 1)).all()
  with np.load("again.npz") as npz:
    assert_same_arrays(dict(npz), original)


def test_failed_npz_write_leaves_nothing(tmp_path):
  out = tmp_path / "model.npz"
  with pytest.raises(RuntimeError):
    with bigvl_io.atomic_file(str(out)) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"half")
      raise RuntimeError("disk full")
  assert os.listdir(tmp_path) == []


def test_npz_given_to_torch_commands_names_the_big_vision_command(cli, tmp_path, capsys):
  path = str(tmp_path / "webli_en_b16_224.npz")
  np.savez(path, **random_state(BV_SIGLIP_KEYS[:3]))
  # open_clip used to fail in torch.load with a traceback; main() is what the command runs.
  errors = []
  for command in (["open_clip", path, str(tmp_path / "oc"), "--model", "ViT-B-32"],
                  ["hf", path, str(tmp_path / "hf")]):
    assert cli.main(command) == 1
    errors.append(capsys.readouterr().err)
  for err in errors:
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {path} is a NumPy .npz archive"), err
    assert f"tools/convert_checkpoint.py big_vision {path} OUT --model_config" in err
  assert not os.path.exists(tmp_path / "oc") and not os.path.exists(tmp_path / "hf")
