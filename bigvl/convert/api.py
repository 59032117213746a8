"""Whole conversions, file or directory to directory: HF / open_clip / big_vision -> bigvl, and
bigvl -> HF / big_vision.

Each reads everything, converts and checks in memory, and only then writes its output
through `bigvl_io.atomic_dir` (`atomic_file`): a failed conversion leaves no output behind.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from bigvl import storage
from bigvl.convert import big_vision, bigvl_io, common, hf_clip, hf_gpt2, hf_siglip, hf_siglip2
from bigvl.convert import hf_vit
from bigvl.convert import torch_io
from bigvl.convert import open_clip as open_clip_format

Progress = Callable[[str], None]

# HF config.json `model_type` -> family module.
HF_FAMILIES = {hf_clip.MODEL_TYPE: hf_clip, hf_siglip.MODEL_TYPE: hf_siglip,
               hf_siglip2.MODEL_TYPE: hf_siglip2,
               hf_vit.MODEL_TYPE: hf_vit, hf_gpt2.MODEL_TYPE: hf_gpt2}
# Families bigvl can write back to HF.
EXPORT_FAMILIES = {"clip": hf_clip, "siglip": hf_siglip, "siglip2": hf_siglip2}


def _convert(family, state: Mapping[str, np.ndarray], model_cfg: Mapping[str, Any],
             meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
  expected = bigvl_io.abstract_params(model_cfg, meta)
  return common.apply_rules(state, family.rules(model_cfg), expected, source=family.SOURCE,
                            ignore=family.IGNORE, hint=family.HINT)


def read_hf_config(hf_dir: str):
  """(family module, transformers config) of a HF model directory."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{hf_dir} has no config.json; give the directory `save_pretrained` "
                            "wrote.")
  with open(path) as f:
    model_type = json.load(f).get("model_type")
  if model_type not in HF_FAMILIES:
    raise common.ConversionError(f"{path}: model_type {model_type!r} is not convertible; "
                                 f"bigvl converts {', '.join(sorted(HF_FAMILIES))}.")
  import transformers
  cls = {"clip": transformers.CLIPConfig, "siglip": transformers.SiglipConfig,
         "siglip2": transformers.Siglip2Config,
         "vit": transformers.ViTConfig, "gpt2": transformers.GPT2Config}[model_type]
  return HF_FAMILIES[model_type], cls.from_pretrained(hf_dir)


def _image_meta(hf_dir: str) -> dict:
  """Normalisation from preprocessor_config.json, when the directory has one."""
  path = os.path.join(hf_dir, "preprocessor_config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    pp = json.load(f)
  return {k: list(pp[k]) for k in ("image_mean", "image_std") if k in pp}


def from_hf(hf_dir: str, out_dir: str, *, model_config: Mapping[str, Any] | None = None,
            progress: Progress = print) -> str:
  """Converts a HF CLIPModel / SiglipModel / ViTModel / GPT2LMHeadModel directory into a
  bigvl checkpoint.

  Args:
    hf_dir: what `save_pretrained` wrote: config.json and model.safetensors (or
      pytorch_model.bin, or their sharded index).
    out_dir: the bigvl checkpoint to create (must not exist).
    model_config: the bigvl model config to convert into; default: derived from config.json.
  Returns:
    The absolute path of `out_dir`.
  Raises:
    ConversionError naming the first tensor that does not fit the model config.
  """
  bigvl_io.check_new_dir(os.path.abspath(out_dir))
  big_vision.refuse_npz(hf_dir, "hf")
  family, hf_cfg = read_hf_config(hf_dir)
  weights = torch_io.find_hf_weights(hf_dir)
  progress(f"reading {weights}")
  state = family.normalize(torch_io.read_state_dict(weights))
  cfg, meta = family.model_config(hf_cfg, {k: tuple(v.shape) for k, v in state.items()})
  meta.update(_image_meta(hf_dir), source=os.path.abspath(hf_dir), format=family.NAME)
  if model_config is not None:
    cfg = dict(model_config)
  progress(f"converting {len(state)} {family.NAME} tensors into a bigvl {cfg['name']} model")
  params = _convert(family, state, cfg, meta)
  return bigvl_io.save_converted(out_dir, cfg, params, meta, progress)


def from_open_clip(checkpoint: str, out_dir: str, *, model_name: str | None = None,
                   open_clip_config: str | Mapping[str, Any] | None = None,
                   model_config: Mapping[str, Any] | None = None,
                   progress: Progress = print) -> str:
  """Converts an open_clip state dict (.bin / .pt / .safetensors) into a bigvl checkpoint.

  Args:
    checkpoint: the state dict file (e.g. open_clip_pytorch_model.bin, or a training
      checkpoint with a "state_dict" entry).
    out_dir: the bigvl checkpoint to create (must not exist).
    model_name: open_clip's model name, e.g. "ViT-B-32" (its JSON config is looked up in the
      installed open_clip); or
    open_clip_config: that JSON config, as a path or a dict.
    model_config: the bigvl model config to convert into; default: derived from the above.
  Returns:
    The absolute path of `out_dir`.
  """
  bigvl_io.check_new_dir(os.path.abspath(out_dir))
  big_vision.refuse_npz(checkpoint, "open_clip")
  if (model_name is None) == (open_clip_config is None):
    raise ValueError("Give exactly one of model_name (e.g. 'ViT-B-32') and open_clip_config.")
  if model_name is not None:
    oc = open_clip_format.find_model_config(model_name)
  elif isinstance(open_clip_config, str):
    with open(open_clip_config) as f:
      oc = json.load(f)
  else:
    oc = dict(open_clip_config)
  progress(f"reading {checkpoint}")
  state = open_clip_format.normalize(torch_io.read_state_dict(checkpoint))
  cfg, meta = open_clip_format.model_config(oc)
  meta.update(source=os.path.abspath(checkpoint), format=open_clip_format.NAME,
              open_clip_model=model_name)
  if model_config is not None:
    cfg = dict(model_config)
  progress(f"converting {len(state)} open_clip tensors into a bigvl {cfg['name']} model")
  params = _convert(open_clip_format, state, cfg, meta)
  return bigvl_io.save_converted(out_dir, cfg, params, meta, progress)


def from_big_vision_npz(checkpoint: str, out_dir: str, *, model_config: Mapping[str, Any],
                        image_size: int | None = None, progress: Progress = print) -> str:
  """Converts a big_vision `.npz` checkpoint (SigLIP, LiT, ViT) into a bigvl checkpoint.

  Args:
    checkpoint: the .npz file; "file.npz:img" converts the image tower of a two-tower file
      (into a `vit` model config), as big_vision's own loader reads it.
    out_dir: the bigvl checkpoint to create (must not exist).
    model_config: the bigvl model config of the checkpoint's shapes (the file has none);
      see `big_vision.check_model_config` for the options big_vision fixes.
    image_size: the input side; default from the learned position table (required with
      sincos2d position embeddings, which have none).
  Returns:
    The absolute path of `out_dir`; meta.json normalises images to [-1, 1], as big_vision.
  """
  bigvl_io.check_new_dir(storage.abspath(out_dir))
  path, key = big_vision.split_key(checkpoint)
  progress(f"reading {path}")
  state = big_vision.read_npz(path)
  cfg = dict(model_config)
  progress(f"converting {len(state)} {big_vision.NAME} tensors into a bigvl {cfg['name']} model")
  params, meta = big_vision.convert(state, cfg, key=key, image_size=image_size)
  if "channels" in meta and not meta["image_size"]:
    raise common.ConversionError(f"{checkpoint} has no learned position table to tell the image "
                                 "size from: give image_size (--image_size).")
  channels = meta.get("channels", 3)
  meta.update(image_mean=[0.5] * channels, image_std=[0.5] * channels,
              source=storage.abspath(path) + (f":{key}" if key else ""), format=big_vision.NAME)
  meta = {k: v for k, v in meta.items() if v is not None}
  return bigvl_io.save_converted(out_dir, cfg, params, meta, progress)


def to_big_vision_npz(bigvl_dir: str, out_path: str, *, scanned: bool = False,
                      prefix: bool = True, progress: Progress = print) -> str:
  """Writes a converted (or trained) bigvl vit / text / two_towers checkpoint as a big_vision
  `.npz` (what big_vision's `utils.load_params` and model `load` functions read).

  Args:
    bigvl_dir: a directory `load_converted` reads.
    out_path: the .npz file to create (must not exist).
    scanned: stack the encoder blocks as big_vision models with `scan=True` keep them.
    prefix: name the arrays `params/...` (big_vision's training checkpoints) or not.
  Returns:
    The absolute path of `out_path`.
  """
  if not out_path.endswith(".npz"):
    raise common.ConversionError(f"Output {out_path} does not end in .npz; big_vision tells "
                                 ".npz checkpoints by their name. Name it e.g. model.npz.")
  bigvl_io.check_new_file(out_path)
  progress(f"reading {bigvl_dir}")
  _, params = bigvl_io.load_converted(bigvl_dir)
  model_cfg = json.loads(storage.read_text(storage.join(bigvl_dir, bigvl_io.CONFIG_FILE)))
  state = big_vision.to_big_vision(params, model_cfg, scanned=scanned, prefix=prefix)
  with bigvl_io.atomic_file(out_path) as tmp:
    progress(f"writing {len(state)} arrays to {storage.abspath(out_path)}")
    with open(tmp, "wb") as f:  # A file object: np.savez would append .npz to a name.
      np.savez(f, **state)
  return storage.abspath(out_path)


def _export_family(model_cfg: Mapping[str, Any], family: str | None):
  if family is None:  # SigLIP pools images with a MAP head; CLIP with its class token.
    family = "siglip" if (model_cfg.get("image") or {}).get("pool") == "map" else "clip"
  if family not in EXPORT_FAMILIES:
    raise ValueError(f"Cannot export to HF family {family!r}; valid: "
                     f"{', '.join(sorted(EXPORT_FAMILIES))}.")
  return EXPORT_FAMILIES[family]


def to_hf_state(model_cfg: Mapping[str, Any], meta: Mapping[str, Any],
                params: Mapping[str, Any], family: str | None = None):
  """(transformers config, HF state dict of NumPy arrays) of a bigvl two-tower model.

  Raises:
    ConversionError naming the first model option the HF class cannot express.
  """
  fam = _export_family(model_cfg, family)
  hf_cfg = fam.hf_config(model_cfg, meta)
  # The HF model must compute the same function: its config, read back, must equal ours.
  diff = common.first_difference(common.canonical_config(model_cfg),
                                 common.canonical_config(fam.model_config(hf_cfg)[0]))
  if diff:
    key, ours, theirs = diff
    raise common.ConversionError(f"{fam.NAME} cannot express model option {key}={ours!r} (it "
                                 f"would be {theirs!r}); export a model that has it, or choose "
                                 "another family.")
  flat = {k: np.asarray(v) for k, v in common.flatten(params).items()}
  state = fam.denormalize(common.invert_rules(flat, fam.rules(model_cfg), target=fam.NAME))
  return hf_cfg, state


def to_hf(bigvl_dir: str, out_dir: str, *, family: str | None = None,
          progress: Progress = print) -> str:
  """Writes a converted (or trained) bigvl two-tower checkpoint as a HF model directory.

  `CLIPModel.from_pretrained(out_dir)` / `SiglipModel.from_pretrained(out_dir)` load it.

  Args:
    bigvl_dir: a directory `load_converted` reads.
    out_dir: the HF directory to create (must not exist).
    family: "clip", "siglip" or "siglip2" (Siglip2Model, NaFlex: needs the image tower's
      posemb_grid); default: siglip when images are pooled by a MAP head.
  Returns:
    The absolute path of `out_dir`.
  """
  bigvl_io.check_new_dir(storage.abspath(out_dir))
  progress(f"reading {bigvl_dir}")
  _, params = bigvl_io.load_converted(bigvl_dir)
  model_cfg = json.loads(storage.read_text(storage.join(bigvl_dir, bigvl_io.CONFIG_FILE)))
  meta = bigvl_io.load_meta(bigvl_dir)
  hf_cfg, state = to_hf_state(model_cfg, meta, params, family)
  with bigvl_io.atomic_dir(out_dir) as tmp:
    hf_cfg.save_pretrained(tmp)
    torch_io.write_safetensors(os.path.join(tmp, "model.safetensors"), state, progress)
  progress(f"wrote {storage.abspath(out_dir)}")
  return storage.abspath(out_dir)


def _image_size_from(params: Mapping[str, np.ndarray], image_prefix: str) -> int | None:
  """Training image side, from a learned (square) position table and the patch size."""
  pe = params.get(f"{image_prefix}pos_embedding")
  kernel = params.get(f"{image_prefix}embedding/kernel")
  if pe is None or kernel is None:
    return None
  side = int(round((pe.shape[1]) ** 0.5))
  return side * kernel.shape[0] if side * side == pe.shape[1] else None


def from_workdir(workdir: str, out_dir: str, *, step: int | None = None,
                 image_size: int | None = None, image_mean=(0.5,), image_std=(0.5,),
                 progress: Progress = print) -> str:
  """Writes a trained `vit` / `two_towers` run's params as a converted checkpoint (which
  `load_converted` reads and `to_hf` turns into a HF directory).

  Args:
    workdir: a `python -m bigvl.train` workdir (config.json and checkpoints/).
    out_dir: the bigvl checkpoint to create (must not exist).
    step: the checkpoint; default the newest.
    image_size: the input side; default from the learned position table.
    image_mean, image_std: what `preprocess` normalises [0, 1] pixels with, one value per
      channel or one for all; the default (0.5) is the demos' value_range(-1, 1).
  Returns:
    The absolute path of `out_dir`; its tokenizer.model is the run's, when it has one.
  """
  from bigvl import checkpoint as ckpt_lib  # Loads orbax checkpoints of training runs.

  bigvl_io.check_new_dir(storage.abspath(out_dir))
  cfg_path = storage.join(workdir, "config.json")
  if not storage.exists(cfg_path):
    raise FileNotFoundError(f"{cfg_path} not found: {workdir} is not a bigvl training workdir.")
  config = json.loads(storage.read_text(cfg_path))
  model_cfg = config["model"]
  if model_cfg.get("name") not in ("vit", "two_towers"):
    raise common.ConversionError(f"Converted checkpoints hold vit or two_towers models; this "
                                 f"run trained {model_cfg.get('name')!r}.")
  path = workdir if step is None else storage.join(workdir, "checkpoints", str(step))
  progress(f"reading {path}")
  params = ckpt_lib.load_params(path)
  prefix = "img/" if model_cfg["name"] == "two_towers" else ""
  image_size = image_size or _image_size_from(params, prefix)
  if not image_size:
    raise common.ConversionError("Cannot tell the image size (no learned position table): "
                                 "give image_size (--image_size).")
  channels = int(params[f"{prefix}embedding/kernel"].shape[2])
  widen = lambda v: [float(x) for x in (list(v) * channels if len(v) == 1 else v)]
  meta = dict(image_size=int(image_size), channels=channels,
              text_len=int(config.get("data", {}).get("text_len") or 0) or None,
              image_mean=widen(image_mean), image_std=widen(image_std),
              source=storage.abspath(workdir), format="bigvl")
  expected = bigvl_io.abstract_params(model_cfg, meta)
  for key, shape in expected.items():
    if key not in params or tuple(params[key].shape) != shape:
      got = tuple(params[key].shape) if key in params else "missing"
      raise common.ConversionError(f"{workdir}: parameter {key} is {got}, the run's model "
                                   f"config builds {shape}.")
  params = {k: np.asarray(v, np.float32) for k, v in params.items() if k in expected}
  tokenizer = storage.join(workdir, "tokenizer.model")
  extra = {"tokenizer.model": tokenizer} if storage.exists(tokenizer) else {}
  return bigvl_io.save_converted(out_dir, model_cfg, params, meta, progress, extra)
