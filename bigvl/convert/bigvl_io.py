"""The converted-checkpoint directory: write it atomically, load it back, preprocess images for it.

Layout of `<out>/`:
  params/      orbax (StandardCheckpointer) param tree, float32, no logical boxes.
  config.json  the bigvl model config: `bigvl.models.build(json.load(...))` builds the model.
  meta.json    what the model config cannot say: input image size and channels, text length,
               image normalisation, and where the weights came from.
Single-file outputs (a big_vision .npz) are written atomically too (`atomic_file`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bigvl import models, storage
from bigvl.convert import common

CONFIG_FILE = "config.json"
META_FILE = "meta.json"
PARAMS_DIR = "params"


def abstract_params(model_cfg: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, tuple]:
  """The parameter shapes of `model_cfg` for inputs described by `meta`, without allocating.

  Args:
    model_cfg: a bigvl model config (`vit`, `text`, `two_towers` or `lm`).
    meta: `image_size`, `channels` (default 3) and `text_len` of the inputs (image_size
      may be absent for a text-only model).
  Returns:
    flat {"img/encoder/block0/...": shape}.
  """
  inputs = (meta.get("image_size") or 1, meta.get("channels", 3), meta.get("text_len") or 1)
  # Tracing a large model takes seconds; a conversion asks for the same shapes several times.
  return dict(_abstract_params(json.dumps(model_cfg, sort_keys=True), inputs))


@functools.lru_cache(maxsize=16)
def _abstract_params(model_cfg_json: str, inputs: tuple[int, int, int]) -> tuple:
  model_cfg = json.loads(model_cfg_json)
  model = models.build(model_cfg)
  name = model_cfg["name"]
  image_size, channels, text_len = inputs
  image = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  text = jax.ShapeDtypeStruct((1, text_len), jnp.int32)
  args = {"vit": (image,), "text": (text,), "two_towers": (image, text), "lm": (text,)}.get(name)
  if args is None:
    raise common.ConversionError(f"Converted checkpoints hold vit, text, two_towers or lm models, "
                                 f"not {name!r}.")
  init = functools.partial(model.init, train=False)
  variables = jax.eval_shape(init, jax.random.PRNGKey(0), *args)
  flat = common.flatten(nn.meta.unbox(variables["params"]))
  return tuple((k, tuple(v.shape)) for k, v in flat.items())


def save_converted(out_dir: str, model_cfg: Mapping[str, Any], params: Mapping[str, np.ndarray],
                   meta: Mapping[str, Any], progress: Callable[[str], None] = print,
                   extra_files: Mapping[str, str] | None = None) -> str:
  """Writes the converted checkpoint `out_dir` atomically (see `atomic_dir`).

  Args:
    out_dir: must not exist yet (nothing already saved is overwritten).
    model_cfg: bigvl model config (JSON-serialisable).
    params: flat {path: array} as `common.apply_rules` returns.
    meta: see the module docstring.
    extra_files: {name in out_dir: path to copy there} (a tokenizer).
  Returns:
    The absolute output directory.
  """
  with atomic_dir(out_dir) as tmp:
    progress(f"writing {len(params)} arrays to {storage.abspath(out_dir)}")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, PARAMS_DIR), common.unflatten(params))
    checkpointer.wait_until_finished()
    write_json(os.path.join(tmp, CONFIG_FILE), model_cfg)
    write_json(os.path.join(tmp, META_FILE), meta)
    for name, src in (extra_files or {}).items():
      storage.copy_file(src, os.path.join(tmp, name))
  return storage.abspath(out_dir)


@contextlib.contextmanager
def atomic_dir(out_dir: str):
  """Yields a temporary sibling of `out_dir`, renamed to `out_dir` when the block completes.

  A failure (or a kill) leaves no `out_dir`; the temporary directory is removed on failure.
  For an `out_dir` in an object store (no rename there) the block fills a local temporary
  directory, whose files are then uploaded with config.json last: `load_converted` takes
  a directory without config.json for no checkpoint at all.
  """
  if storage.is_remote(out_dir):
    check_new_dir(out_dir)
    with tempfile.TemporaryDirectory(prefix="bigvl-convert-") as tmp:
      yield tmp
      check_new_dir(out_dir)
      files = [os.path.relpath(os.path.join(root, f), tmp)
               for root, _, names in os.walk(tmp) for f in names]
      for rel in sorted(files, key=lambda r: r == CONFIG_FILE):
        storage.copy_file(os.path.join(tmp, rel), storage.join(out_dir, *rel.split(os.sep)))
    return
  out_dir = os.path.abspath(out_dir)
  check_new_dir(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  try:
    yield tmp
    check_new_dir(out_dir)  # Someone may have created it meanwhile.
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


@contextlib.contextmanager
def atomic_file(path: str):
  """Yields a temporary local file path; when the block completes, its content becomes `path`.

  `path` must not exist, before or after the block (nothing is overwritten); a failure (or a
  kill) leaves no `path`. Locally the file is published with a hard link, which fails rather
  than replace a file created meanwhile; in an object store it is uploaded as one object.
  """
  check_new_file(path)
  remote = storage.is_remote(path)
  parent = tempfile.gettempdir() if remote else os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  # Not mkstemp: its file is private (0600); this one gets the usual permissions (umask).
  name = f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp = os.path.join(parent, name)
  open(tmp, "xb").close()
  try:
    yield tmp
    check_new_file(path)
    if remote:
      storage.copy_file(tmp, path)
    else:
      try:
        os.link(tmp, os.path.abspath(path))
      except FileExistsError:
        check_new_file(path)  # Raises, with the message.
        raise
      except OSError:  # A file system without hard links: rename (checked just above).
        os.rename(tmp, os.path.abspath(path))
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def check_new_file(path: str) -> None:
  if storage.exists(path):
    raise FileExistsError(f"Output file {path} already exists; conversion never overwrites. "
                          "Choose a new output path or remove the old one.")


def check_new_dir(out_dir: str) -> None:
  if storage.exists(out_dir):
    raise FileExistsError(f"Output directory {out_dir} already exists; conversion never overwrites."
                          " Choose a new output path or remove the old one.")


def write_json(path: str, obj) -> None:
  """Writes `obj` to `path` as indented, key-sorted JSON (config.json and meta.json of a
  converted checkpoint; the step of `save_converted` that runs after the params are saved)."""
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


def load_meta(out_dir: str) -> dict[str, Any]:
  """meta.json of a converted checkpoint (image size, normalisation, text length, source)."""
  return json.loads(storage.read_text(storage.join(out_dir, META_FILE)))


def load_converted(out_dir: str) -> tuple[nn.Module, dict]:
  """Loads a directory written by tools/convert_checkpoint.py.

  Returns:
    (model, params): the bigvl module and its param tree (jax arrays), ready for
    `model.apply({"params": params}, ...)`.
  Raises:
    FileNotFoundError if `out_dir` is not a converted checkpoint; ConversionError naming the
    first parameter whose shape differs from what config.json builds.
  """
  cfg_path = storage.join(out_dir, CONFIG_FILE)
  if not storage.exists(cfg_path) or not storage.isdir(storage.join(out_dir, PARAMS_DIR)):
    raise FileNotFoundError(f"{out_dir} is not a converted bigvl checkpoint (no {CONFIG_FILE} and "
                            f"{PARAMS_DIR}/); create one with tools/convert_checkpoint.py.")
  model_cfg = json.loads(storage.read_text(cfg_path))
  meta = load_meta(out_dir)
  restored = ocp.StandardCheckpointer().restore(
      storage.epath(storage.abspath(storage.join(out_dir, PARAMS_DIR))))
  flat = common.flatten(restored)
  expected = abstract_params(model_cfg, meta)
  for path, shape in expected.items():
    if path not in flat:
      raise common.ConversionError(f"{out_dir}: parameter {path} {shape} is missing; config.json "
                                   "does not describe these params.")
    if tuple(flat[path].shape) != shape:
      raise common.ConversionError(f"{out_dir}: parameter {path} has shape "
                                   f"{tuple(flat[path].shape)}, config.json builds {shape}.")
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise common.ConversionError(f"{out_dir}: parameters {extra[:3]} are not in the model that "
                                 "config.json builds.")
  params = common.unflatten({k: jnp.asarray(v) for k, v in flat.items()})
  return models.build(model_cfg), params


def preprocess(images: np.ndarray, meta: Mapping[str, Any]) -> jax.Array:
  """uint8 images (n, h, w, c) -> float32 (n, s, s, c) as the converted model expects.

  Resizes the shorter side to `meta["image_size"]` (bicubic, antialiased), crops the centre,
  scales to [0, 1] and normalises with `image_mean`/`image_std` (CLIP's preprocessing).
  """
  size = meta["image_size"]
  x = jnp.asarray(images, jnp.float32) / 255.0
  n, h, w, c = x.shape
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  x = jax.image.resize(x, (n, nh, nw, c), "bicubic", antialias=True)
  top, left = (nh - size) // 2, (nw - size) // 2
  x = jnp.clip(x[:, top:top + size, left:left + size], 0.0, 1.0)
  mean = jnp.asarray(meta.get("image_mean", [0.5] * c), jnp.float32)
  std = jnp.asarray(meta.get("image_std", [0.5] * c), jnp.float32)
  return (x - mean) / std
