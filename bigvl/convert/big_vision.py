"""big_vision `.npz` checkpoints (SigLIP, LiT, AugReg ViT) <-> bigvl `vit` / `text` / `two_towers`.

big_vision saves a model as flat arrays named by their "/"-joined flax path, optionally under
`params/`. The names, from big_vision's models/vit.py, models/proj/image_text/two_towers.py
and text_transformer.py (tests/test_convert_big_vision.py lists them for tiny models):

  ViT           embedding/{kernel,bias}               patch conv (kh, kw, c, width)
                pos_embedding                         (1, patches, width); none for sincos2d
                cls                                   (1, 1, width), pool_type="tok" only
                Transformer/encoderblock_N/...        block N (see below)
                Transformer/encoder_norm/{scale,bias}
                MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}
                pre_logits/{kernel,bias}              rep_size dense (then tanh)
                head/{kernel,bias}                    classifier / projection
  text          Embed_0/embedding                     (vocab, width)
                pos_embedding                         (1, text_len, width)
                Encoder_0/encoderblock_N/..., Encoder_0/encoder_norm, MAPHead_0/..., head
  block         LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value}/kernel
                (width, heads, head_dim) and bias (heads, head_dim), .../out/kernel
                (heads, head_dim, width), LayerNorm_1, MlpBlock_0/Dense_0, MlpBlock_0/Dense_1
  two towers    img/<ViT>, txt/<text>, t (1,) log temperature, b (1,) bias (SigLIP)

Every tensor has bigvl's layout already (both are flax), so the rules only rename. With
`scan=True` big_vision stacks the blocks into one `encoderblock/...` with a leading depth axis.
Checkpoints of the original ViT code (AugReg) number submodules across types
(`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`) and keep the position table in
`Transformer/posembed_input`; both are renamed on reading, as big_vision itself does, and
their class token has a position (bigvl `cls_posemb=True`).

big_vision uses tanh-approximated GELU and LayerNorm eps 1e-6 everywhere, no causal or padding
mask in its text tower, and no projections outside the towers' `head`s: `check_model_config`
refuses a bigvl config that would compute something else on the same weights.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any, Mapping

import numpy as np

from bigvl import storage
from bigvl.convert import bigvl_io, common
from bigvl.convert.common import Rule
from bigvl.models import layer_scan
from bigvl.models.text import TextTransformer
from bigvl.models.vit import ViT

NAME = "big_vision"
SOURCE = f"the {NAME} checkpoint"
HINT = ("big_vision checkpoints carry no config: give the bigvl model config the checkpoint was "
        "trained with (sizes, pool, head sizes, text length), e.g. siglip:B/16.")
COMMAND = "tools/convert_checkpoint.py big_vision"

# bigvl block part -> big_vision module, relative to a block.
_BLOCK = {"ln1": "LayerNorm_0", "attn": "MultiHeadDotProductAttention_0", "ln2": "LayerNorm_1",
          "mlp/fc1": "MlpBlock_0/Dense_0", "mlp/fc2": "MlpBlock_0/Dense_1"}
_MAP_HEAD = {"attn": "MultiHeadDotProductAttention_0", "ln": "LayerNorm_0",
             "mlp/fc1": "MlpBlock_0/Dense_0", "mlp/fc2": "MlpBlock_0/Dense_1"}
_LEAVES = {"ln1": ("scale", "bias"), "ln2": ("scale", "bias"), "ln": ("scale", "bias"),
           "mlp/fc1": ("kernel", "bias"), "mlp/fc2": ("kernel", "bias")}
_ATTN_LEAVES = tuple(f"{p}/{leaf}" for p in ("query", "key", "value", "out")
                     for leaf in ("kernel", "bias"))

# big_vision pool_type -> bigvl pool, per tower (its text "mean"/"gmp" are aliases).
VIT_POOLS = {"map": "map", "gap": "gap", "tok": "cls", "0": "first", "none": "none"}
TEXT_POOLS = {"last": "last", "first": "first", "gap": "gap_all", "mean": "gap_all",
              "max": "max_all", "gmp": "max_all", "map": "map"}

# Where each model's towers are, in both layouts (bigvl's prefixes are big_vision's).
IMAGE_PREFIX = {"vit": "", "two_towers": "img/"}
TEXT_PREFIX = {"text": "", "two_towers": "txt/"}

_ENCODER_BLOCK = re.compile(r"^(.*?)encoderblock_(\d+)/(.*)$")
_SCANNED_BLOCK = re.compile(r"^(.*?)encoderblock/(.*)$")
_PRE_LINEN = re.compile(r"^(.*)_(\d+)$")


# ----------------------------------------------------------------------------- rules


def _module(dst: str, src: str, leaves) -> list[Rule]:
  return [Rule(f"{dst}/{leaf}", f"{src}/{leaf}", "same") for leaf in leaves]


def _parts(dst: str, src: str, names: Mapping[str, str]) -> list[Rule]:
  """Rules of a block or MAP head: each bigvl part in `names` at `dst`, its big_vision name at
  `src`."""
  rules = []
  for part, module in names.items():
    rules += _module(f"{dst}{part}", f"{src}{module}", _LEAVES.get(part, _ATTN_LEAVES))
  return rules


def _tower(dst: str, src: str, encoder: str, depth: int) -> list[Rule]:
  """The parts ViT and text towers share: encoder blocks and norm, MAP head, head."""
  rules = []
  for i in range(depth):
    rules += _parts(f"{dst}encoder/block{i}/", f"{src}{encoder}/encoderblock_{i}/", _BLOCK)
  rules += _module(f"{dst}encoder/encoder_norm", f"{src}{encoder}/encoder_norm", ("scale", "bias"))
  rules += [Rule(f"{dst}map_head/probe", f"{src}MAPHead_0/probe", "same")]
  rules += _parts(f"{dst}map_head/", f"{src}MAPHead_0/", _MAP_HEAD)
  return rules + _module(f"{dst}head", f"{src}head", ("kernel", "bias"))


def vit_rules(opts: Mapping[str, Any], dst: str = "", src: str = "") -> list[Rule]:
  """Rules of a bigvl ViT with options `opts` whose params are under `dst` ("img/" in a two-tower
  model), its big_vision names under `src`."""
  r = _module(f"{dst}embedding", f"{src}embedding", ("kernel", "bias"))
  r += [Rule(f"{dst}pos_embedding", f"{src}pos_embedding", "same"),
        Rule(f"{dst}cls", f"{src}cls", "same")]
  r += _tower(dst, src, "Transformer", ViT(**dict(opts)).dims()["depth"])
  return r + _module(f"{dst}pre_logits", f"{src}pre_logits", ("kernel", "bias"))


def text_rules(opts: Mapping[str, Any], dst: str = "", src: str = "") -> list[Rule]:
  """Rules of a bigvl TextTransformer (see `vit_rules`)."""
  r = [Rule(f"{dst}token_embedding/embedding", f"{src}Embed_0/embedding", "same"),
       Rule(f"{dst}pos_embedding", f"{src}pos_embedding", "same")]
  return r + _tower(dst, src, "Encoder_0", TextTransformer(**dict(opts)).dims()["depth"])


def rules(cfg: Mapping[str, Any]) -> list[Rule]:
  """Every bigvl parameter a big_vision checkpoint of model config `cfg` can hold, with its
  big_vision name (without `params/`); `cfg` is a `vit`, `text` or `two_towers` config."""
  cfg = dict(cfg)
  name = cfg.pop("name")
  if name == "vit":
    return vit_rules(cfg)
  if name == "text":
    return text_rules(cfg)
  if name != "two_towers":
    raise common.ConversionError(f"big_vision conversion knows vit, text and two_towers models, "
                                 f"not {name!r}.")
  r = []
  if cfg.get("image") is not None:
    r += vit_rules(cfg["image"], IMAGE_PREFIX[name], IMAGE_PREFIX[name])
  if cfg.get("text") is not None:
    r += text_rules(cfg["text"], TEXT_PREFIX[name], TEXT_PREFIX[name])
  return r + [Rule("t", "t", "same"), Rule("b", "b", "same")]


# ----------------------------------------------------------------------------- configs


def _refuse(where: str, option: str, value, why: str, fix: str):
  raise common.ConversionError(f"{where}.{option}={value!r}: {why}; {fix}.")


def _check_tower(c: Mapping[str, Any], where: str) -> None:
  """What both towers share: big_vision's MLP, LayerNorm and head."""
  if c["act"] != "gelu_tanh":
    _refuse(where, "act", c["act"], "big_vision's MLPs use flax nn.gelu (tanh approximation)",
            "set act='gelu_tanh'")
  if c["ln_eps"] != 1e-6:
    _refuse(where, "ln_eps", c["ln_eps"], "big_vision's LayerNorms use eps 1e-6",
            "set ln_eps=1e-6")
  if c.get("num_classes") and not c["head_bias"]:
    _refuse(where, "head_bias", False, "big_vision's head always has a bias",
            "set head_bias=True")


def _check_vit(c: Mapping[str, Any], given: Mapping[str, Any], where: str) -> None:
  """`c`: canonical ViT options; `given`: as written (canonical_config calls every cls-pooled
  ViT norm_pooled, which pools the same, but big_vision has no parameter for it)."""
  _check_tower(c, where)
  for option, value, ok, why in (
      ("pre_norm", c["pre_norm"], False, "big_vision has no LayerNorm before the first block"),
      ("final_norm", c["final_norm"], True, "big_vision always has Transformer/encoder_norm"),
      ("norm_pooled", given.get("norm_pooled", False), False,
       "big_vision normalises all tokens, before pooling"),
      ("patch_bias", c["patch_bias"], True, "big_vision's patch embedding has a bias")):
    if value != ok:
      _refuse(where, option, value, why, f"set {option}={ok!r}")
  if c["pool"] not in VIT_POOLS.values():
    _refuse(where, "pool", c["pool"], "big_vision has no such pool_type",
            f"use one of {', '.join(sorted(set(VIT_POOLS.values())))}")


def _check_text(c: Mapping[str, Any], where: str) -> None:
  _check_tower(c, where)
  for option in ("causal", "mask_pad"):
    if c[option]:
      _refuse(where, option, True, "big_vision's text tower attends to every position",
              f"set {option}=False")
  if c["pool"] == "gap":
    _refuse(where, "pool", "gap", "bigvl's 'gap' averages over non-pad tokens, big_vision's "
            "over all positions (padding included)", "set pool='gap_all'")
  if c["pool"] not in TEXT_POOLS.values():
    _refuse(where, "pool", c["pool"], "big_vision has no such pool_type",
            f"use one of {', '.join(sorted(set(TEXT_POOLS.values())))}")


def check_model_config(cfg: Mapping[str, Any]) -> None:
  """Raises ConversionError naming the first option of bigvl model config `cfg` with which the
  bigvl model would compute something else than big_vision on the same weights."""
  c = common.canonical_config(cfg)
  if c["name"] == "vit":
    return _check_vit(c, cfg, "config.model")
  if c["name"] == "text":
    return _check_text(c, "config.model")
  if c["embed_dim"]:
    _refuse("config.model", "embed_dim", c["embed_dim"], "big_vision has no projections "
            "outside the towers", "set embed_dim=None and image/text num_classes to the "
            "embedding size (big_vision's out_dim)")
  if c["image"] is not None:
    _check_vit(c["image"], cfg["image"], "config.model.image")
  if c["text"] is not None:
    _check_text(c["text"], "config.model.text")


def unscanned_config(cfg: Mapping[str, Any]) -> dict:
  """`cfg` with every tower's `scan_layers` off: the layout the rules describe."""
  out = {k: (unscanned_config(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
  out.pop("scan_layers", None)
  return out


# ----------------------------------------------------------------------------- reading


def looks_like_npz(path: str) -> bool:
  """Whether `path` is a NumPy `.npz` archive (big_vision's checkpoint format): named so, or a
  zip of `.npy` members (torch's zip checkpoints hold `data.pkl` instead)."""
  if not storage.isfile(path):
    return False
  if path.endswith(".npz"):
    return True
  if storage.is_remote(path):
    return False
  try:
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
  except (zipfile.BadZipFile, OSError):
    return False
  return bool(names) and all(n.endswith(".npy") for n in names)


def refuse_npz(path: str, command: str) -> None:
  """ConversionError if `path`, given to `command` (hf, open_clip), is a big_vision `.npz`."""
  if looks_like_npz(path):
    raise common.ConversionError(
        f"{path} is a NumPy .npz archive (big_vision's checkpoint format), which the {command} "
        f"command cannot read; convert it with `{COMMAND} {path} OUT --model_config ...`.")


def split_key(checkpoint: str) -> tuple[str, str | None]:
  """"ckpt.npz:img" -> ("ckpt.npz", "img") (big_vision's syntax for one part of a checkpoint);
  "ckpt.npz" -> ("ckpt.npz", None)."""
  m = re.match(r"^(.*\.npz):([\w/]+)$", checkpoint)
  return (m.group(1), m.group(2)) if m else (checkpoint, None)


def read_npz(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a `.npz` file, local or in a store; bfloat16 arrays (which NumPy saves
  as 2-byte voids) come back as float32, exactly."""
  if not storage.exists(path):
    raise FileNotFoundError(f"Checkpoint file {path} does not exist.")
  source = path if not storage.is_remote(path) else io.BytesIO(storage.read_bytes(path))
  try:
    npz = np.load(source, allow_pickle=False)
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise common.ConversionError(f"{path} is not a NumPy .npz archive ({e}); torch checkpoints "
                                 "convert with the hf or open_clip command.") from e
  if not isinstance(npz, np.lib.npyio.NpzFile):  # A single array (np.save).
    raise common.ConversionError(f"{path} holds one array, not a checkpoint's named arrays.")
  with npz:
    return {k: _float32(npz[k]) for k in npz.files}


def _float32(x: np.ndarray) -> np.ndarray:
  if x.dtype.type is np.void and x.dtype.itemsize == 2:
    import ml_dtypes
    return x.view(ml_dtypes.bfloat16).astype(np.float32)
  if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
    return x.astype(np.float32)  # float16 upcasts exactly; float64 is rounded.
  return x


def _params_only(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The params of a checkpoint: under `params/` (optax-era checkpoints), `opt/target/` (flax
  optimizer era), or at the top level (the published files)."""
  for prefix in ("params/", "opt/target/"):
    if any(k.startswith(prefix) for k in state):
      return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  return dict(state)


def _linen_names(tree: dict) -> dict:
  """Pre-linen flax numbered submodules across types (Dense_0, LayerNorm_1, Dense_2); linen per
  type (Dense_0, LayerNorm_0, Dense_1). Renumbers every level per type, in index order; a
  linen checkpoint is unchanged."""
  def index(name):
    m = _PRE_LINEN.match(name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)

  out, counts = {}, {}
  for name in sorted(tree, key=index):
    value = tree[name]
    if isinstance(value, dict):
      m = _PRE_LINEN.match(name)
      if m:
        counts[m.group(1)] = counts.get(m.group(1), -1) + 1
        name = f"{m.group(1)}_{counts[m.group(1)]}"
      value = _linen_names(value)
    out[name] = value
  return out


def _old_posemb(tree: dict) -> dict:
  """Position tables moved to their current place (the top of their tower), at every level."""
  for name, value in list(tree.items()):
    if isinstance(value, dict):
      tree[name] = _old_posemb(value)
  enc = tree.get("Transformer")
  if isinstance(enc, dict):
    if isinstance(enc.get("posembed_input"), dict):  # The original ViT code.
      tree["pos_embedding"] = enc.pop("posembed_input")["pos_embedding"]
    if "pos_embedding" in enc:  # big_vision before 2022.
      tree["pos_embedding"] = enc.pop("pos_embedding")
  enc = tree.get("Encoder_0")
  if isinstance(enc, dict) and "pos_embedding" in enc and "pos_embedding" in tree:
    # Some text towers added a second table inside the encoder: x saw their sum.
    tree["pos_embedding"] = tree["pos_embedding"] + enc.pop("pos_embedding")
  return tree


def unstack_blocks(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Scanned `.../encoderblock/<rest>` (depth, ...) -> `.../encoderblock_{i}/<rest>`."""
  out = {}
  for key, value in flat.items():
    m = _SCANNED_BLOCK.match(key)
    if m is None:
      out[key] = value
      continue
    for i in range(value.shape[0]):
      out[f"{m.group(1)}encoderblock_{i}/{m.group(2)}"] = value[i]
  return out


def stack_blocks(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of `unstack_blocks`: big_vision's `scan=True` layout."""
  out, groups = {}, {}
  for key, value in flat.items():
    m = _ENCODER_BLOCK.match(key)
    if m is None:
      out[key] = value
    else:
      groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = value
  for (head, rest), blocks in groups.items():
    out[f"{head}encoderblock/{rest}"] = np.stack([blocks[i] for i in range(len(blocks))])
  return out


def normalize(state: Mapping[str, np.ndarray], key: str | None = None) -> dict[str, np.ndarray]:
  """A big_vision checkpoint's arrays -> today's unscanned names, without `params/`.

  Args:
    state: {"/"-joined name: array}, as saved.
    key: a part to take, as in big_vision's "file.npz:img" ("img", "txt"); None: all.
  """
  tree = common.unflatten(_params_only(state))
  if key is not None:
    top = ", ".join(sorted(tree))
    for part in key.split("/"):
      if not isinstance(tree, dict) or part not in tree:
        raise common.ConversionError(f"{SOURCE} has no part {key!r} (its top level holds "
                                     f"{top}); name one of those after the colon.")
      tree = tree[part]
  flat = common.flatten(_old_posemb(_linen_names(tree)))
  return unstack_blocks(flat)


def input_meta(state: Mapping[str, np.ndarray], cfg: Mapping[str, Any],
               image_size: int | None = None) -> dict[str, Any]:
  """Image size, channels and text length of normalised big_vision `state` for model config
  `cfg`, from its tables: a learned position table gives the image size (image_size None
  without one, unless given), the text table the text length.

  Raises:
    ConversionError if `image_size` disagrees with the learned position table.
  """
  name = cfg["name"]
  img, txt = IMAGE_PREFIX.get(name), TEXT_PREFIX.get(name)
  meta: dict[str, Any] = {}
  if img is not None and f"{img}embedding/kernel" in state:
    kernel = state[f"{img}embedding/kernel"]
    meta["channels"] = int(kernel.shape[2])
    meta["image_size"] = image_size
    table = state.get(f"{img}pos_embedding")
    opts = cfg if name == "vit" else (cfg.get("image") or {})
    if table is not None and not opts.get("posemb_grid"):
      n = table.shape[1] - int(bool(opts.get("cls_posemb")))
      side = int(round(n ** 0.5))
      size = side * int(kernel.shape[0]) if side * side == n else None
      if image_size not in (None, size):
        raise common.ConversionError(
            f"image_size {image_size} does not fit {img}pos_embedding, learned for {n} patches "
            f"({size}px); leave image_size out, or set posemb_grid={side} in the model config "
            "to resize the table to other images.")
      meta["image_size"] = size
  if txt is not None and f"{txt}pos_embedding" in state:
    meta["text_len"] = int(state[f"{txt}pos_embedding"].shape[1])
  return meta


# ----------------------------------------------------------------------------- conversions


def convert(state: Mapping[str, np.ndarray], model_config: Mapping[str, Any], *,
            key: str | None = None, image_size: int | None = None
            ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(flat bigvl params, meta) of big_vision checkpoint arrays `state` (as saved).

  Raises:
    ConversionError naming the first tensor that does not fit `model_config`, or the first
    model option big_vision does not have.
  """
  check_model_config(model_config)
  state = normalize(state, key)
  name = model_config["name"]
  if name != "two_towers" and {k.split("/")[0] for k in state} <= {"img", "txt", "t", "b"}:
    raise common.ConversionError(
        f"{SOURCE} is a two-tower one (img/, txt/): convert one tower into a {name} model with "
        f"FILE.npz:{'img' if name == 'vit' else 'txt'} (key=...), or both into two_towers.")
  meta = input_meta(state, model_config, image_size)
  shapes = dict(meta)
  if "channels" in meta and not meta["image_size"]:
    # No position table (sincos2d): one patch gives every parameter's shape.
    shapes["image_size"] = int(state[f"{IMAGE_PREFIX[name]}embedding/kernel"].shape[0])
  flat_cfg = unscanned_config(model_config)
  expected = bigvl_io.abstract_params(flat_cfg, shapes)
  params = common.apply_rules(state, rules(flat_cfg), expected, source=SOURCE, hint=HINT)
  if flat_cfg != dict(model_config):  # Stack the blocks of towers with scan_layers=True.
    params = layer_scan.match_layout(params, bigvl_io.abstract_params(model_config, shapes))
  return params, meta


def from_big_vision(npz_path_or_dict, model_config: Mapping[str, Any], *,
                    key: str | None = None) -> dict:
  """bigvl params of a big_vision checkpoint, for `models.build(model_config)`.

  Args:
    npz_path_or_dict: a `.npz` path (big_vision's "file.npz:img" selects the image tower), or
      its {name: array} dict, with or without `params/`, blocks scanned or not.
    model_config: a bigvl `vit`, `text` or `two_towers` config of the checkpoint's shapes.
    key: the part to convert, as "img" in "file.npz:img".
  Returns:
    The nested param tree of NumPy float32 arrays: `model.apply({"params": params}, ...)`;
    ViT patch kernel (p, p, c, width), attention kernels (width, heads, head_dim), ...
  Raises:
    ConversionError naming the first tensor or model option that does not fit.
  """
  if isinstance(npz_path_or_dict, str):
    path, from_path = split_key(npz_path_or_dict)
    key = key or from_path
    npz_path_or_dict = read_npz(path)
  else:
    npz_path_or_dict = {k: _float32(np.asarray(v)) for k, v in npz_path_or_dict.items()}
  params, _ = convert(npz_path_or_dict, model_config, key=key)
  return common.unflatten(params)


def to_big_vision(params, model_config: Mapping[str, Any], *, scanned: bool = False,
                  prefix: bool = True) -> dict[str, np.ndarray]:
  """A bigvl model's params as big_vision saves them: {name: array} for `np.savez`.

  Args:
    params: the param tree (nested, or flat "/"-joined) of `models.build(model_config)`.
    model_config: a bigvl `vit`, `text` or `two_towers` config big_vision can express.
    scanned: stack each encoder's blocks as big_vision's `scan=True` models keep them.
    prefix: name every array `params/...`, as big_vision's training checkpoints do (its
      `load_params` reads either).
  Returns:
    {name: float32 array}, sorted by name like big_vision's own flattening.
  """
  check_model_config(model_config)
  flat = {k: np.asarray(v) for k, v in common.flatten(params).items()}
  flat_cfg = unscanned_config(model_config)
  if flat_cfg != dict(model_config):
    # Only the key layout matters: block{i} paths of the towers' encoders.
    encoders = {k.rsplit("/blocks/block/", 1)[0] for k in flat if "/blocks/block/" in k}
    flat = layer_scan.unstack_layers(flat, encoders)
  state = common.invert_rules(flat, rules(flat_cfg), target=f"a {NAME} checkpoint")
  if scanned:
    state = stack_blocks(state)
  pre = "params/" if prefix else ""
  return {f"{pre}{k}": state[k] for k in sorted(state)}
