"""Parameter counts of the captioning paper configs (configs/coca/base.py, configs/cappa/b16.py)
against reference models built on torch's "meta" device (nothing is allocated).

CoCa-Base: open_clip's `CoCa` built at the config's sizes. Every parameter of both models is
put in a named group; shared groups must have equal counts, and each difference is a named
parameter of one model only (or an extra row of a position table), listed below with its
reason. Also: the image encoder and text decoder round to the paper's Table 1 sizes (86M,
297M).

CapPa B/16 (no public reference model): the encoder against HF `ViTModel` (B/16, no pooler;
differences: its class token and the class token's position), the decoder (with the
image-token projection the captioner applies before cross-attention) against a reference
made of torch modules of the same shapes (`nn.TransformerDecoder` of pre-LN
`nn.TransformerDecoderLayer`s, embedding, position table, mask embedding, output layer):
exact.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import flax.linen as nn  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bigvl import config_lib, models  # noqa: E402
from bigvl.convert import common  # noqa: E402


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(rel: str):
  return config_lib.load_config_file(os.path.join(ROOT, rel) + ":data_dir=/x")


def _bigvl_params(model_cfg, image_size: int, text_len: int) -> dict[str, int]:
  """{"img/encoder/...": size} of the model built from `model_cfg`, from jax.eval_shape."""
  model = models.build(model_cfg.to_dict())
  variables = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)),
      jnp.zeros((1, text_len), jnp.int32)))
  flat = common.flatten(nn.meta.unbox(variables["params"]))
  return {k: int(np.prod(v.shape)) for k, v in flat.items()}


def _torch_params(module) -> dict[str, int]:
  return {n: p.numel() for n, p in module.named_parameters()}


def _group(params: dict[str, int], rules: list[tuple[str, str]]) -> dict[str, int]:
  """Sums `params` by the label of the first rule (regex, label) that fully matches each
  name; every parameter must match one."""
  out: dict[str, int] = {}
  for name, n in params.items():
    label = next((lab for pat, lab in rules if re.fullmatch(pat, name)), None)
    assert label is not None, f"parameter {name} is in no group"
    out[label] = out.get(label, 0) + n
  return out


# ----------------------------------------------------------------------------------- CoCa

COCA_BIGVL = [
    (r"img/embedding/kernel", "image patch embedding (kernel)"),
    (r"img/embedding/bias", "bigvl only: patch embedding bias"),
    (r"img/pos_embedding", "image position embedding"),
    (r"img/encoder/(?!encoder_norm/).*", "image encoder blocks"),
    (r"img/encoder/encoder_norm/.*", "image final LayerNorm"),
    (r"img_pool/.*", "bigvl only: contrastive MAP pooler (1 query + LayerNorm + MLP)"),
    (r"img_proj/kernel", "image projection"),
    (r"mem_proj/.*", "bigvl only: image-token projection for cross-attention"),
    (r"dec/token_embedding/.*", "token embedding"),
    (r"dec/pos_embedding", "text position embedding"),
    (r"dec/cls", "text CLS embedding"),
    (r"dec/mask_embedding", "bigvl only: mask embedding (CapPa's; unused by CoCa)"),
    (r"dec/block([0-9]|1[01])/.*", "unimodal text layers"),
    (r"dec/block(1[2-9]|2[0-3])/.*", "multimodal layers (self-attn, cross-attn, one MLP)"),
    (r"dec/cls_norm/.*", "text CLS LayerNorm"),
    (r"txt_proj/kernel", "text projection"),
    (r"dec/decoder_norm/.*", "multimodal final LayerNorm"),
    (r"dec/head/kernel", "vocabulary logits (kernel)"),
    (r"dec/head/bias", "bigvl only: logits bias"),
    (r"t", "temperature"),
]

COCA_OPEN_CLIP = [
    (r"visual\.conv1\.weight", "image patch embedding (kernel)"),
    (r"visual\.positional_embedding", "image position embedding"),
    (r"visual\.class_embedding", "open_clip only: image class token"),
    (r"visual\.ln_pre\..*", "open_clip only: LayerNorm before the image encoder"),
    (r"visual\.transformer\..*", "image encoder blocks"),
    (r"visual\.ln_post\..*", "image final LayerNorm"),
    (r"visual\.attn_pool\..*", "open_clip only: 256-query attentional pooler"),
    (r"visual\.proj", "image projection"),
    (r"text\.token_embedding\..*", "token embedding"),
    (r"text\.positional_embedding", "text position embedding"),
    (r"text\.cls_emb", "text CLS embedding"),
    (r"text\.transformer\..*", "unimodal text layers"),
    (r"text\.ln_final\..*", "text CLS LayerNorm"),
    (r"text\.text_projection", "text projection"),
    (r"text_decoder\.cross_attn\.\d+\.(ln_1_kv|ln_2|mlp)\..*",
     "open_clip only: the cross-attention blocks' own LayerNorms and MLP"),
    (r"text_decoder\.(resblocks\.\d+|cross_attn\.\d+\.(ln_1|attn))\..*",
     "multimodal layers (self-attn, cross-attn, one MLP)"),
    (r"text_decoder\.ln_final\..*", "multimodal final LayerNorm"),
    (r"text_decoder\.text_projection", "vocabulary logits (kernel)"),
    (r"logit_scale", "temperature"),
]


def open_clip_coca_cfg(model_cfg, image_size: int) -> dict:
  """open_clip's CoCa config (the layout of its coca_ViT-B-32 / coca_ViT-L-14 files) at the
  sizes of bigvl CoCa config `model_cfg`."""
  img, dec = model_cfg.image, model_cfg.decoder
  uni = dec.unimodal_depth
  text = dict(context_length=dec.max_len, vocab_size=dec.vocab_size, width=dec.width,
              heads=dec.num_heads, layers=uni, mlp_ratio=dec.mlp_dim / dec.width)
  return dict(
      embed_dim=model_cfg.embed_dim,
      vision_cfg=dict(image_size=image_size, layers=img.depth, width=img.width,
                      patch_size=img.patch_size, head_width=img.width // img.num_heads,
                      mlp_ratio=img.mlp_dim / img.width, attentional_pool=True,
                      attn_pooler_heads=img.num_heads, output_tokens=True),
      text_cfg=dict(text, embed_cls=True, output_tokens=True),
      multimodal_cfg=dict(text, layers=dec.depth - uni, heads=dec.num_heads,
                          attn_pooler_heads=dec.num_heads),
  )


@pytest.mark.unit
def test_open_clip_coca_b32_file_has_the_layout_we_build():
  # The configs we build follow open_clip's own CoCa files (keys and switches).
  ref = open_clip.get_model_config("coca_ViT-B-32")
  ours = open_clip_coca_cfg(_load("configs/coca/base.py").model, 288)
  assert set(ours) | {"custom_text"} == set(ref)
  for tower in ("vision_cfg", "text_cfg", "multimodal_cfg"):
    assert set(ref[tower]) <= set(ours[tower]), tower
  assert ref["vision_cfg"]["attentional_pool"] and ref["text_cfg"]["embed_cls"]


@pytest.mark.unit
def test_coca_base_param_count_vs_open_clip():
  cfg = _load("configs/coca/base.py").model
  res, text_len = 288, cfg.decoder.max_len
  assert (cfg.image.width, cfg.image.depth, cfg.image.mlp_dim, cfg.image.num_heads) == (
      768, 12, 3072, 12)
  assert (cfg.decoder.depth, cfg.decoder.unimodal_depth) == (24, 12)
  ours = _bigvl_params(cfg, res, text_len)
  with torch.device("meta"):
    ref_model = open_clip.CoCa(**open_clip_coca_cfg(cfg, res))
  ref = _torch_params(ref_model)
  a, b = _group(ours, COCA_BIGVL), _group(ref, COCA_OPEN_CLIP)

  d, v, layers = cfg.decoder.width, cfg.decoder.vocab_size, cfg.decoder.depth - 12
  width = cfg.image.width
  # Shared groups whose counts differ, by (bigvl - open_clip):
  shape_diffs = {
      # open_clip's image tokens include a class token, which has a position (257 x 768).
      "image position embedding": -width,
      # open_clip's text positions cover its appended CLS token too (65 x 768); bigvl's CLS
      # token has no position of its own.
      "text position embedding": -d,
  }
  for label in sorted(set(a) & set(b)):
    assert a[label] - b[label] == shape_diffs.get(label, 0), (label, a[label], b[label])

  bigvl_only = {k: n for k, n in a.items() if k not in b}
  ref_only = {k: n for k, n in b.items() if k not in a}
  assert bigvl_only == {
      "bigvl only: patch embedding bias": width,
      "bigvl only: contrastive MAP pooler (1 query + LayerNorm + MLP)":
          width + (4 * width * width + 4 * width) + 2 * width
          + (2 * width * cfg.image.mlp_dim + cfg.image.mlp_dim + width),
      "bigvl only: image-token projection for cross-attention": width * d + d,
      "bigvl only: mask embedding (CapPa's; unused by CoCa)": d,
      "bigvl only: logits bias": v,
  }
  mlp = 2 * d * cfg.decoder.mlp_dim + cfg.decoder.mlp_dim + d
  assert ref_only == {
      "open_clip only: image class token": width,
      "open_clip only: LayerNorm before the image encoder": 2 * width,
      # 256 queries, attention (K/V from the 768-wide tokens), LayerNorms of queries and keys.
      "open_clip only: 256-query attentional pooler":
          256 * width + (4 * width * width + 4 * width) + 2 * 2 * width,
      # open_clip's MultimodalTransformer pairs each self-attention block (with its MLP)
      # with a full cross-attention block that has its own MLP and a LayerNorm of the image
      # tokens; the paper's (and bigvl's) multimodal layer has one MLP.
      "open_clip only: the cross-attention blocks' own LayerNorms and MLP":
          layers * (2 * d + 2 * d + mlp),
  }
  total_ours, total_ref = sum(ours.values()), sum(ref.values())
  assert total_ours == (total_ref + sum(shape_diffs.values()) + sum(bigvl_only.values())
                        - sum(ref_only.values()))
  assert (total_ours, total_ref) == (391_754_753, 443_283_457)


@pytest.mark.unit
def test_coca_base_towers_round_to_the_paper_table_1():
  cfg = _load("configs/coca/base.py").model
  ours = _bigvl_params(cfg, 288, cfg.decoder.max_len)
  image = sum(n for k, n in ours.items() if k.startswith("img/"))
  decoder = sum(n for k, n in ours.items() if k.startswith("dec/") and "mask_embedding" not in k)
  assert round(image / 1e6) == 86       # Table 1: image encoder 86M.
  assert round(decoder / 1e6) == 297    # Table 1: text decoder 297M (383M in all).
  # The rest: the poolers and projections (8.9M), which Table 1's 383M leaves out.
  assert round((image + decoder) / 1e6) == 383


# ----------------------------------------------------------------------------------- CapPa


class _TorchCaptionDecoder(torch.nn.Module):
  """bigvl's TextDecoder (+ the captioner's mem_proj) from torch modules of the same shapes:
  pre-LN decoder layers (self-attention, cross-attention, MLP, three LayerNorms, biases
  everywhere), token embedding, learned positions, a mask embedding, final LayerNorm and a
  vocabulary layer with bias."""

  def __init__(self, width, depth, mlp_dim, heads, vocab, max_len):
    super().__init__()
    self.mem_proj = torch.nn.Linear(width, width)
    self.token_embedding = torch.nn.Embedding(vocab, width)
    self.pos_embedding = torch.nn.Parameter(torch.zeros(1, max_len, width))
    self.mask_embedding = torch.nn.Parameter(torch.zeros(1, 1, width))
    layer = torch.nn.TransformerDecoderLayer(width, heads, mlp_dim, batch_first=True,
                                             norm_first=True)
    self.layers = torch.nn.TransformerDecoder(layer, depth, norm=torch.nn.LayerNorm(width))
    self.head = torch.nn.Linear(width, vocab)


@pytest.mark.unit
def test_cappa_b16_encoder_param_count_vs_hf_vit():
  cfg = _load("configs/cappa/b16.py").model
  ours = _bigvl_params(cfg, 224, cfg.decoder.max_len)
  encoder = sum(n for k, n in ours.items() if k.startswith("img/"))
  with torch.device("meta"):
    hf = transformers.ViTModel(transformers.ViTConfig(), add_pooling_layer=False)  # B/16, 224.
  ref = _torch_params(hf)
  width = hf.config.hidden_size
  # HF prepends a class token, which also has a position (197 x 768); a captioner's encoder
  # gives its 196 patch tokens to the decoder and has neither.
  assert ref["embeddings.cls_token"] == width
  assert ref["embeddings.position_embeddings"] == 197 * width
  assert sum(ref.values()) == 85_798_656  # HF ViT-B/16 without its pooler.
  assert encoder == sum(ref.values()) - 2 * width == 85_797_120


@pytest.mark.unit
def test_cappa_b16_decoder_param_count_vs_torch_modules():
  cfg = _load("configs/cappa/b16.py").model
  dec = cfg.decoder
  assert (dec.width, dec.depth, dec.mlp_dim, dec.num_heads, dec.vocab_size) == (
      768, 6, 3072, 12, 32_000)
  ours = _bigvl_params(cfg, 224, dec.max_len)
  decoder = sum(n for k, n in ours.items() if not k.startswith("img/"))
  with torch.device("meta"):
    ref = _TorchCaptionDecoder(dec.width, dec.depth, dec.mlp_dim, dec.num_heads,
                               dec.vocab_size, dec.max_len)
  ref_params = _torch_params(ref)
  assert decoder == sum(ref_params.values()) == 106_536_704
  # Layer by layer, too.
  block = sum(n for k, n in ours.items() if k.startswith("dec/block0/"))
  assert block == sum(p.numel() for p in ref.layers.layers[0].parameters())
  assert sum(ours.values()) == 85_797_120 + 106_536_704


# ------------------------------------------------------------- the decoder's remat option


@pytest.mark.integration
@pytest.mark.slow  # A CoCa and a captioner differentiated twice each: about a minute.
@pytest.mark.parametrize("name", ["coca", "captioner"])
def test_decoder_remat_gives_the_same_loss_and_grads(name):
  """The paper configs recompute the decoder's activations (decoder.remat="full"): same param
  tree, loss and gradients (up to float32 recompute rounding) as without, dropout included."""
  results = []
  for remat in ("none", "full"):
    cfg = dict(name=name, image=dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8),
               decoder=dict(width=32, depth=3, mlp_dim=64, num_heads=2, vocab_size=50,
                            max_len=8, unimodal_depth=1 if name == "coca" else 0, remat=remat,
                            dropout=0.1))
    if name == "coca":
      cfg["embed_dim"] = 32
    model = models.build(cfg)
    image = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    text = jax.random.randint(jax.random.PRNGKey(2), (2, 8), 3, 50)
    params = model.init(jax.random.PRNGKey(0), image, text)["params"]

    def loss(p):
      out = model.apply({"params": p}, image, text, train=True,
                        rngs={"dropout": jax.random.PRNGKey(3)})
      logits = out[2]["logits"] if name == "coca" else out
      return (logits ** 2).mean()
    results.append((jax.tree_util.tree_structure(params), *jax.value_and_grad(loss)(params)))
  (tree0, loss0, grads0), (tree1, loss1, grads1) = results
  assert tree0 == tree1
  np.testing.assert_allclose(loss0, loss1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6),
               grads0, grads1)
