"""Preprocessing ops and the `pp` spec that chains them.

A spec is a `|`-separated list of ops, big_vision style:
`"resize(16)|random_crop(16, pad=2)|value_range(-1, 1)|choose_text|tokenize"`.
Each op is `fn(example: dict, rng: np.random.Generator | None) -> dict`. Random ops
draw from `rng`; given `rng=None` (evaluation) they take their deterministic
counterpart (centre crop, first caption, no flip). The loader derives `rng` from the
seed and the example's position in the stream, so augmentation is reproducible.
Ops register with `@PP_OPS.register("name")` (bigvl.registry); bigvl/data/pp_ops.py lists
the modules that define them.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from typing import Any, Callable

import numpy as np

from bigvl.registry import PP_OPS, check_kwargs

Op = Callable[[dict, "np.random.Generator | None"], dict]


def _split_ops(spec: str) -> list[str]:
  """Splits on `|` outside quotes and brackets, so an op can take a quoted pp spec of its
  own (`each_image('resize(16)|value_range(-1, 1)')`)."""
  parts, depth, quote, start = [], 0, None, 0
  for i, ch in enumerate(spec):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "|" and depth == 0:
      parts.append(spec[start:i])
      start = i + 1
  parts.append(spec[start:])
  return parts


def parse(spec: str) -> list[tuple[str, list[Any], dict[str, Any]]]:
  """`"a(1, k=2)|b"` -> [("a", [1], {"k": 2}), ("b", [], {})]."""
  out = []
  for part in (p.strip() for p in _split_ops(spec)):
    if not part:
      continue
    try:
      node = ast.parse(part, mode="eval").body
    except SyntaxError as e:
      raise ValueError(f"Cannot parse pp op {part!r} in {spec!r}: {e.msg}.") from e
    if isinstance(node, ast.Name):
      out.append((node.id, [], {}))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
      out.append((node.func.id, args, kwargs))
    else:
      raise ValueError(f"pp op {part!r} in {spec!r} is not of the form name or name(args).")
  return out


def build_ops(spec: str, **context) -> list[Op]:
  """The ops of a spec, each built by its registered factory. `context` (e.g. tokenizer=,
  text_len=) fills op options the spec leaves out, for ops that accept them."""
  ops = []
  for name, args, kwargs in parse(spec):
    factory = PP_OPS.get(name)
    check_kwargs(factory, kwargs, f"pp op {name!r}")
    accepted = factory.__code__.co_varnames[:factory.__code__.co_argcount +
                                            factory.__code__.co_kwonlyargcount]
    for k, v in context.items():
      if k in accepted and k not in kwargs:
        kwargs[k] = v
    ops.append(factory(*args, **kwargs))
  return ops


def chain(ops: list[Op]) -> Op:
  """One op that applies `ops` in order (to a copy of the example dict)."""
  def apply(example, rng=None):
    example = dict(example)
    for op in ops:
      example = op(example, rng)
    return example
  return apply


def build(spec: str, **context) -> Op:
  """Compiles a spec into one op. `context` (e.g. tokenizer=, text_len=) fills op options
  the spec leaves out, for ops that accept them."""
  return chain(build_ops(spec, **context))


# --- Deferring the affine tail to the device -------------------------------------------
#
# value_range and normalize are per-pixel affine maps. Done on the host they turn a uint8
# image into float32: 4x the bytes through shared memory and host-to-device, and a fifth of a
# data worker's time per 224px image. When such an op acts on a field that is still uint8
# and nothing after it in the spec reads that field, it can run inside the jitted train step
# instead, with the same float32 arithmetic. To know what "nothing after it reads that
# field" means, ops carry the fields they touch (`touches`); an op without that declaration
# (a user's op) is taken to touch every field.


@dataclasses.dataclass(frozen=True)
class Affine:
  """float32(x) * scale + shift over the last (channel) axis: what value_range and normalize
  compute. scale, shift: tuples of floats, one per channel or a single one for all; a
  per-channel map on a 1-channel image repeats the grey channel first (as the host op does).
  Hashable, so that a step closing over it can be jitted."""
  key: str
  scale: tuple[float, ...]
  shift: tuple[float, ...]

  def arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) as float32 arrays of shape () or (C,)."""
    as_arr = lambda v: np.float32(v[0]) if len(v) == 1 else np.asarray(v, np.float32)
    return as_arr(self.scale), as_arr(self.shift)

  def __call__(self, x):
    """x: (..., C) uint8 or float, NumPy or JAX -> float32 (..., C'), C' the statistics'
    channels for a per-channel map on grey, else C. On JAX arrays (the device path) this is
    the same float32 multiply then add as `affine` does on the host."""
    scale, shift = self.arrays()
    x = x.astype(np.float32)
    if np.ndim(scale) and x.shape[-1] != scale.shape[0]:
      if x.shape[-1] != 1:
        raise ValueError(f"Per-channel statistics of {scale.shape[0]} channels for an image "
                         f"of shape {x.shape}; decode with the matching channels.")
      x = x[..., np.zeros(scale.shape[0], np.int32)]  # Grey: the same value in every channel.
    # x stays on the left: a NumPy scalar on the left would try to convert a traced JAX array.
    return x * scale + shift


def touches(*fields: str):
  """Marks an op with the example fields it reads or writes (see `split_device_tail`)."""
  def mark(op):
    op.touches = frozenset(fields)
    return op
  return mark


@dataclasses.dataclass(frozen=True)
class DeviceTransform:
  """{field: Affines applied in order}: the pp's tail that runs on the device, at the start
  of the train step. `__call__(batch)` maps a batch dict (B, ...) field by field; fields not
  named pass unchanged. Empty: the identity."""
  affines: tuple[tuple[str, tuple[Affine, ...]], ...] = ()

  def __bool__(self) -> bool:
    return bool(self.affines)

  @property
  def fields(self) -> tuple[str, ...]:
    return tuple(k for k, _ in self.affines)

  def __call__(self, batch: dict) -> dict:
    out = dict(batch)
    for key, chain_ in self.affines:
      x = out[key]
      for a in chain_:
        x = a(x)
      out[key] = x
    return out


def split_device_tail(ops: list[Op]) -> tuple[list[Op], dict[str, list[Affine]]]:
  """(host ops, {field: its deferred Affines in order}) of a built op list.

  An affine op (value_range, normalize) is deferred when no later op touches its field; a
  later op that does (a resize after value_range, or any op that declares no fields) gets
  the deferred affines of the fields it touches put back on the host just before it, so the
  host ops followed by the deferred affines compute exactly what `ops` do. An affine on a
  field a later `keep` drops is dropped. Whether the field is uint8 there is the caller's
  check: it depends on the data, not on the spec.
  """
  host, pending = [], {}

  def flush(keys):
    for k in keys:
      host.extend(pending.pop(k))

  for op in ops:
    sub = getattr(op, "device_split", None)
    if sub is not None:  # each_image: its own spec's tail, on the stacked field.
      flush([k for k in pending if k == sub.key])
      host.append(sub.host)
      if sub.affines:
        pending[sub.key] = affine_ops(sub.affines)
      continue
    if getattr(op, "affine", None) is not None:
      pending.setdefault(op.affine.key, []).append(op)
      continue
    keeps = getattr(op, "keeps", None)
    if keeps is not None:
      for k in [k for k in pending if k not in keeps]:
        del pending[k]
      host.append(op)
      continue
    touched = getattr(op, "touches", None)
    flush([k for k in pending if touched is None or k in touched])
    host.append(op)
  return host, {k: [op.affine for op in v] for k, v in pending.items()}


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  """What an op that runs a spec of its own (each_image) offers `split_device_tail`: the op
  with only the host part of its spec (`host`), and the Affines left for the device on the
  field `key` it writes."""
  key: str
  host: Op
  affines: tuple[Affine, ...]


def affine_ops(affines) -> list[Op]:
  """Host ops computing `affines` (Affine each) in order: a deferred tail put back on the host."""
  def one(a: Affine) -> Op:
    scale, shift = a.arrays()

    def op(ex, rng):
      ex[a.key] = affine(ex[a.key], scale, shift)
      return ex
    op.affine = a
    op.touches = frozenset([a.key])
    return op
  return [one(a) for a in affines]


def resize_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
  """Bilinear resize with half-pixel centres (as PIL/TF). (H, W, C) -> (h, w, C) float32."""
  img = np.asarray(img, np.float32)
  H, W = img.shape[:2]

  def coords(n_out, n_in):
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (x - lo).astype(np.float32)

  y0, y1, wy = coords(h, H)
  x0, x1, wx = coords(w, W)
  top = img[y0][:, x0] * (1 - wx)[None, :, None] + img[y0][:, x1] * wx[None, :, None]
  bot = img[y1][:, x0] * (1 - wx)[None, :, None] + img[y1][:, x1] * wx[None, :, None]
  return top * (1 - wy)[:, None, None] + bot * wy[:, None, None]


def keep_uint8(resized: np.ndarray, like) -> np.ndarray:
  """A resize's float32 result back in the input's dtype when that was uint8 (rounded half
  to even, clipped), else float32. Why: a uint8 image must stay uint8 through the geometric
  ops for value_range/normalize to run on the device (a quarter of the bytes to move); the
  rounding (at most half a grey level) is the same on the host and the device path, as
  big_vision's resize, which also casts back to the input dtype."""
  if np.asarray(like).dtype != np.uint8:
    return resized
  return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


@PP_OPS.register("resize")
def resize(size, key: str = "image"):
  """Bilinear resize to `size` (int or (h, w)); uint8 stays uint8 (rounded), anything else
  becomes float32 in its input range."""
  h, w = (size, size) if isinstance(size, int) else size

  @touches(key)
  def op(ex, rng):
    ex[key] = keep_uint8(resize_bilinear(ex[key], h, w), ex[key])
    return ex
  return op


def naflex_grid(height: int, width: int, patch_size: int, max_patches: int) -> tuple[int, int]:
  """(rows, cols) of patches for an image of height x width pixels under a budget of
  `max_patches`: the image scaled by the largest factor s for which
  max(1, ceil(height * s / p)) * max(1, ceil(width * s / p)) <= max_patches (each side
  rounded up to whole patches, at least one), as SigLIP 2's NaFlex preprocessing: the
  aspect ratio kept up to that rounding. s is found by bisection on [1e-6, 100] to 1e-5."""
  if max_patches < 1 or patch_size < 1:
    raise ValueError(f"naflex: max_patches={max_patches} and patch_size={patch_size} must be "
                     ">= 1.")

  def grid(scale):
    return (max(1, math.ceil(height * scale / patch_size)),
            max(1, math.ceil(width * scale / patch_size)))

  lo, hi = 1e-6, 100.0
  while hi - lo >= 1e-5:
    mid = (lo + hi) / 2
    rows, cols = grid(mid)
    if rows * cols <= max_patches:
      lo = mid
    else:
      hi = mid
  return grid(lo)


def cut_patches(img: np.ndarray, patch_size: int) -> np.ndarray:
  """(rows*p, cols*p, c) -> (rows*cols, p*p*c): row-major patches, each flattened
  (row, col, channel) -- the ViT patch kernel's order and Siglip2ImageProcessor's."""
  h, w, c = img.shape
  p = patch_size
  return img.reshape(h // p, p, w // p, p, c).swapaxes(1, 2).reshape(-1, p * p * c)


@PP_OPS.register("naflex")
def naflex(patch_size: int, max_patches: int, key: str = "image", shapes_key: str = "image_shapes"):
  """SigLIP 2's NaFlex input: the image resized (bilinear) to the largest patch grid that
  fits `max_patches` keeping its aspect ratio (`naflex_grid`), cut into patches, and padded
  with zero rows to `max_patches`: `key` becomes (max_patches, p*p*c) (uint8 stays uint8)
  and `shapes_key` the grid (rows, cols) int32. Put value_range/normalize after it; the
  ViT takes the pair as `ViT(patches, spatial_shapes=...)` (two towers: `image_shapes=`)."""
  naflex_grid(1, 1, patch_size, max_patches)   # Checks the options when the pp is built.

  @touches(key, shapes_key)
  def op(ex, rng):
    img = np.asarray(ex[key])
    if img.ndim != 3:
      raise ValueError(f"naflex: {key!r} has shape {img.shape}; expected one (h, w, c) image.")
    rows, cols = naflex_grid(img.shape[0], img.shape[1], patch_size, max_patches)
    resized = keep_uint8(resize_bilinear(img, rows * patch_size, cols * patch_size), img)
    patches = np.zeros((max_patches, patch_size * patch_size * img.shape[2]), resized.dtype)
    patches[:rows * cols] = cut_patches(resized, patch_size)
    ex[key] = patches
    ex[shapes_key] = np.asarray([rows, cols], np.int32)
    return ex
  return op


@PP_OPS.register("random_crop")
def random_crop(size, pad: int = 0, key: str = "image"):
  """Zero-pads by `pad` then crops `size` at a random place (centre when evaluating)."""
  h, w = (size, size) if isinstance(size, int) else size

  @touches(key)
  def op(ex, rng):
    img = ex[key]
    if pad:
      img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    H, W = img.shape[:2]
    if H < h or W < w:
      raise ValueError(f"random_crop({size}): image {img.shape[:2]} is smaller than the crop.")
    if rng is None:
      y, x = (H - h) // 2, (W - w) // 2
    else:
      y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    ex[key] = img[y:y + h, x:x + w]
    return ex
  return op


@PP_OPS.register("central_crop")
def central_crop(size, key: str = "image"):
  h, w = (size, size) if isinstance(size, int) else size

  @touches(key)
  def op(ex, rng):
    img = ex[key]
    H, W = img.shape[:2]
    y, x = (H - h) // 2, (W - w) // 2
    ex[key] = img[y:y + h, x:x + w]
    return ex
  return op


@PP_OPS.register("flip_lr")
def flip_lr(key: str = "image"):
  """Random horizontal flip with probability 1/2 (none when evaluating)."""
  @touches(key)
  def op(ex, rng):
    if rng is not None and rng.random() < 0.5:
      ex[key] = _flip_lr(np.asarray(ex[key]))
    return ex
  return op


def _flip_lr(img: np.ndarray) -> np.ndarray:
  # A contiguous copy, not a negative-stride view: every later op on a view of a
  # (H, W, 3) image runs numpy's slow strided path (2-4x slower at 224x224).
  if img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] in (1, 3):
    from PIL import Image
    flat = img[..., 0] if img.shape[-1] == 1 else img
    out = np.asarray(Image.fromarray(flat).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    return out.reshape(img.shape)
  return np.ascontiguousarray(img[:, ::-1])


@PP_OPS.register("value_range")
def value_range(vmin: float = -1.0, vmax: float = 1.0, in_min: float = 0.0,
                in_max: float = 255.0, key: str = "image"):
  """Maps [in_min, in_max] linearly to [vmin, vmax], as float32. In a train pp on a uint8
  field with nothing after it touching that field, it runs on the device (see
  `split_device_tail`)."""
  scale = np.float32((vmax - vmin) / (in_max - in_min))
  shift = np.float32(vmin - in_min * (vmax - vmin) / (in_max - in_min))
  return _affine_op(Affine(key, (float(scale),), (float(shift),)))


def _affine_op(a: Affine) -> Op:
  return affine_ops([a])[0]


NORM_STATS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@PP_OPS.register("normalize")
def normalize(stats: str = "imagenet", key: str = "image"):
  """(x / 255 - mean) / std with named statistics: imagenet | clip | siglip."""
  if stats not in NORM_STATS:
    raise ValueError(f"Unknown normalize stats {stats!r}; valid: {sorted(NORM_STATS)}.")
  mean, std = (np.asarray(s, np.float64) for s in NORM_STATS[stats])
  # One scale and one shift, in place on the float copy: a third of the memory traffic of
  # the textbook expression, which matters at 224x224 on a data worker's budget.
  scale = (1.0 / (255.0 * std)).astype(np.float32)
  shift = (-mean / std).astype(np.float32)
  return _affine_op(Affine(key, tuple(map(float, scale)), tuple(map(float, shift))))


def affine(img, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
  """float32 img * scale + shift, with per-channel (C,) or scalar scale and shift; a
  per-channel map on a 1-channel image repeats the channel. img: (..., H, W, C) or (..., C).
  The same float32 multiply then add as `Affine.__call__` on the device."""
  x = np.array(img, np.float32)
  if x.ndim and np.ndim(scale) and x.shape[-1] != np.shape(scale)[0]:
    if x.shape[-1] != 1:
      raise ValueError(f"Per-channel statistics of {np.shape(scale)[0]} channels for an image "
                       f"of shape {x.shape}; decode with the matching channels.")
    x = np.repeat(x, np.shape(scale)[0], axis=-1)  # Grey: the same value in every channel.
  if x.ndim >= 2 and np.ndim(scale):
    # Broadcasting over a last axis of 3 runs numpy's inner loop 3 elements at a time;
    # over rows tiled to W*C it runs once per row, several times faster.
    rows = x.reshape(-1, x.shape[-2] * x.shape[-1])
    rows *= np.tile(scale, x.shape[-2])
    rows += np.tile(shift, x.shape[-2])
  else:
    x *= scale
    x += shift
  return x


class UnusableExample(ValueError):
  """An example the pp cannot use because of its data (not the code or the config): the
  loader skips it, replacing it by another, counted in `data/skipped` (or stops, by
  config.data.on_corrupt)."""


class MissingText(UnusableExample):
  """An example that reaches a text op with no usable caption (none, or only empty or
  whitespace ones)."""


def usable_texts(texts, what: str) -> tuple[str, ...]:
  """The captions of `texts` (a string or a sequence of them) that are not empty or
  whitespace, in order; MissingText (naming `what`, e.g. the example's key) when none is."""
  texts = (texts,) if isinstance(texts, str) else () if texts is None else tuple(texts)
  usable = tuple(t for t in texts if isinstance(t, str) and t.strip())
  if not usable:
    raise MissingText(f"no usable caption in {what}: {texts!r}")
  return usable


@PP_OPS.register("choose_text")
def choose_text(key: str = "texts", out: str = "text"):
  """Picks one of several captions at random (the first when evaluating). Empty and
  whitespace captions are passed over; an example with no other raises MissingText, which
  the loader turns into a skipped example."""
  @touches(key, out)
  def op(ex, rng):
    texts = usable_texts(ex[key], f"{key!r} of example {ex.get('key', '?')!r}")
    ex[out] = texts[0] if rng is None else texts[int(rng.integers(len(texts)))]
    return ex
  return op


@PP_OPS.register("tokenize")
def tokenize(key: str = "text", length: int | None = None, tokenizer=None, text_len=None):
  """Tokenizes `ex[key]` into (length,) int32 ids (EOS, then padding). An empty or
  whitespace string raises MissingText (the loader skips the example)."""
  if tokenizer is None:
    raise ValueError("pp op 'tokenize' needs a tokenizer; the loader passes config.data's.")
  length = length or text_len
  if not length:
    raise ValueError("pp op 'tokenize' needs a length: tokenize(length=16) or config.data.text_len.")

  @touches(key)
  def op(ex, rng):
    text = ex[key]
    if isinstance(text, str):  # One caption: an empty one is no caption (MissingText).
      text = usable_texts(text, f"{key!r} of example {ex.get('key', '?')!r}")[0]
    ex[key] = tokenizer.encode(text, length)
    return ex
  return op


@PP_OPS.register("keep")
def keep(*keys):
  """Keeps only the listed keys."""
  def op(ex, rng):
    missing = [k for k in keys if k not in ex]
    if missing:
      raise KeyError(f"pp op keep{keys}: example has no {missing}; it has {sorted(ex)}.")
    return {k: ex[k] for k in keys}
  op.keeps = frozenset(keys)
  return op


class CorruptImage(UnusableExample):
  """An image that cannot be decoded. The loader skips the example (or stops, by config)."""


def _to_channels(img: np.ndarray, channels: int | None) -> np.ndarray:
  if img.ndim == 2:
    img = img[..., None]
  if channels is None or img.shape[-1] == channels:
    return img
  if channels == 3 and img.shape[-1] == 1:
    return np.repeat(img, 3, axis=-1)
  if channels == 3 and img.shape[-1] == 4:
    return img[..., :3]
  if channels == 1:
    return np.round(img[..., :3].astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))[
        ..., None].astype(img.dtype)
  raise ValueError(f"Cannot convert an image with {img.shape[-1]} channels to {channels}.")


def _open(data: bytes, key: str):
  """PIL image of encoded bytes, header read (pixels not yet decoded)."""
  import io
  from PIL import Image
  try:
    return Image.open(io.BytesIO(data))
  except Exception as e:  # PIL raises several types for unknown/garbled headers.
    raise CorruptImage(f"cannot open image {key!r}: {type(e).__name__}: {e}") from e


def _pil_mode(channels: int | None) -> str | None:
  return {1: "L", 3: "RGB", None: None}[channels]


def _sample_max(img) -> int:
  """The largest sample value of a PIL integer image of mode I or I;16*: 2**31 - 1 for a
  TIFF that says it holds 32 bits per sample, else 65535 (16-bit PNG, PGM/PPM, which
  Pillow scales to 16 bits, 16-bit TIFF)."""
  if img.mode == "I":
    bits = getattr(img, "tag_v2", {}).get(258)  # TIFF BitsPerSample.
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    if bits == 32:
      return 2 ** 31 - 1
  return 65535


def to_8bit(img):
  """A PIL image of more than 8 bits per sample as an 8-bit grey ("L") one, its samples
  scaled to 0-255 and rounded: integer modes (I;16, I;16B, ..., I) by v * 255 / max
  (`_sample_max`, negatives as 0), float (F) from [0, 1] (outside clipped, NaN as 0). Any
  other mode is returned as it is. PIL's own convert() clips such images at 255 instead
  (a 16-bit gradient comes out almost white). Loads the pixels."""
  mode = img.mode
  if not (mode == "F" or mode == "I" or mode.startswith("I;16")):
    return img
  from PIL import Image
  x = np.asarray(img).astype(np.float64)
  if mode == "F":
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
    top = 1.0
  else:
    top = float(_sample_max(img))
  x = np.clip(x, 0.0, top) * (255.0 / top)
  return Image.fromarray(np.rint(x).astype(np.uint8))


def _load_pixels(img, key: str, channels: int | None) -> np.ndarray:
  try:
    img = to_8bit(img)
    mode = _pil_mode(channels)
    if mode and img.mode != mode:
      img = img.convert(mode)
    return _to_channels(np.asarray(img, np.uint8), channels)
  except Exception as e:  # Truncated data surfaces only when the pixels are decoded.
    raise CorruptImage(f"cannot decode image {key!r}: {type(e).__name__}: {e}") from e


@PP_OPS.register("decode")
def decode(channels: int | None = 3, key: str = "image"):
  """Encoded image bytes (JPEG, PNG, ...) -> uint8 (H, W, channels).

  Images of more than 8 bits per sample (16-bit PNG or TIFF, 32-bit int, float) are
  scaled to 0-255 (`to_8bit`). An already decoded array only gets its channels fixed (grey -> RGB, RGBA -> RGB).
  Undecodable bytes raise CorruptImage, which the loader turns into a skipped example.
  """
  if channels not in (1, 3, None):
    raise ValueError(f"decode(channels={channels}): valid are 1, 3 or None (as stored).")

  @touches(key)
  def op(ex, rng):
    data = ex[key]
    if isinstance(data, (bytes, bytearray, memoryview)):
      ex[key] = _load_pixels(_open(bytes(data), ex.get("key", "?")), ex.get("key", "?"), channels)
    else:
      ex[key] = _to_channels(np.asarray(data), channels)
    return ex
  return op


def sample_crop_box(height: int, width: int, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """Inception-style crop (y, x, h, w): area a fraction of the image in `scale`, aspect
  ratio log-uniform in `ratio`; 10 tries, then the largest centred crop within `ratio`.
  With `rng=None` (evaluation) the whole image.
  """
  if rng is not None:
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
      target = area * rng.uniform(*scale)
      aspect = np.exp(rng.uniform(*log_ratio))
      w = int(round(np.sqrt(target * aspect)))
      h = int(round(np.sqrt(target / aspect)))
      if 0 < w <= width and 0 < h <= height:
        return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


@PP_OPS.register("inception_crop")
def inception_crop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), channels: int | None = 3,
                   key: str = "image"):
  """Random resized crop (Inception / torchvision RandomResizedCrop) to `size`, bilinear.

  Takes encoded bytes (decoded here to `channels`, as `decode` would) or a decoded array.
  From bytes it decodes only at the scale the crop needs (JPEG DCT scaling), which is most
  of this pipeline's speed on large photos; when evaluating it resizes the whole image.
  Output uint8 (size, size, C).
  """
  from PIL import Image
  if channels not in (1, 3, None):
    raise ValueError(f"inception_crop(channels={channels}): valid are 1, 3 or None (as stored).")
  h_out, w_out = (size, size) if isinstance(size, int) else size

  @touches(key)
  def op(ex, rng):
    data, name = ex[key], ex.get("key", "?")
    if isinstance(data, (bytes, bytearray, memoryview)):
      img = _open(bytes(data), name)
      W, H = img.size
      y, x, h, w = sample_crop_box(H, W, rng, scale, ratio)
      # draft() may only shrink by powers of two while keeping the crop >= the output.
      factor = max(1, min(h // h_out, w // w_out))
      try:
        img = to_8bit(img)  # 16-bit and float images: scaled, not clipped by convert().
        if factor > 1 and img.format == "JPEG":
          img.draft("RGB", (W // factor, H // factor))
        sx, sy = img.size[0] / W, img.size[1] / H
        mode = _pil_mode(channels) or ("RGB" if img.mode not in ("L", "RGB") else img.mode)
        if img.mode != mode:  # convert() copies even to the same mode.
          img = img.convert(mode)
        out = img.resize((w_out, h_out), Image.BILINEAR,
                         box=(x * sx, y * sy, (x + w) * sx, (y + h) * sy))
      except CorruptImage:
        raise
      except Exception as e:  # Truncated data surfaces only when pixels are decoded.
        raise CorruptImage(f"cannot decode image {name!r}: {type(e).__name__}: {e}") from e
      ex[key] = _to_channels(np.asarray(out, np.uint8), None)
    else:
      arr = np.asarray(data)
      y, x, h, w = sample_crop_box(arr.shape[0], arr.shape[1], rng, scale, ratio)
      if arr.dtype == np.uint8:
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        out = np.asarray(pil.resize((w_out, h_out), Image.BILINEAR, box=(x, y, x + w, y + h)))
        ex[key] = _to_channels(out, None)
      else:
        crop = arr[y:y + h, x:x + w]
        ex[key] = resize_bilinear(crop, h_out, w_out)
    return ex
  return op


@PP_OPS.register("resize_small")
def resize_small(size: int, key: str = "image"):
  """Resizes so that the shorter side is `size`, keeping the aspect ratio (bilinear); uint8
  stays uint8 (rounded), as `resize`."""
  @touches(key)
  def op(ex, rng):
    img = ex[key]
    H, W = img.shape[:2]
    s = size / min(H, W)
    ex[key] = keep_uint8(resize_bilinear(img, max(1, round(H * s)), max(1, round(W * s))), img)
    return ex
  return op


@PP_OPS.register("rgb")
def rgb(key: str = "image"):
  """Grey (H, W, 1) -> (H, W, 3) by repeating the channel; RGBA drops alpha."""
  @touches(key)
  def op(ex, rng):
    ex[key] = _to_channels(np.asarray(ex[key]), 3)
    return ex
  return op


def photometric(img: np.ndarray, rng, jitter: float, blur: float, solarize: float):
  """DINO-style photometric augmentation of a uint8 (H, W, C) image: brightness and contrast
  each scaled by a factor in [1 - jitter, 1 + jitter]; Gaussian blur (sigma 0.1-2 pixels of
  a 224-pixel image, scaled to this one) with probability `blur`; solarisation (pixels above
  128 inverted) with probability `solarize`."""
  x = img.astype(np.float32)
  if jitter:
    x = x * rng.uniform(1 - jitter, 1 + jitter)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - jitter, 1 + jitter) + mean
  if blur and rng.random() < blur:
    from PIL import Image, ImageFilter
    sigma = rng.uniform(0.1, 2.0) * max(img.shape[:2]) / 224
    chans = [np.asarray(Image.fromarray(np.clip(x[..., c], 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(sigma)), np.float32) for c in range(x.shape[-1])]
    x = np.stack(chans, axis=-1)
  x = np.clip(np.round(x), 0, 255)
  if solarize and rng.random() < solarize:
    x = np.where(x >= 128, 255 - x, x)
  return x.astype(np.uint8)


@PP_OPS.register("multi_crop")
def multi_crop(global_size, local_size, num_global: int = 2, num_local: int = 6,
               global_scale=(0.4, 1.0), local_scale=(0.05, 0.4), flip: bool = True,
               jitter: float = 0.0, blur: float = 0.0, solarize: float = 0.0,
               channels: int | None = 3, key: str = "image", keep: bool = False):
  """DINO's multi-crop: `num_global` random resized crops of `global_size` and `num_local`
  of `local_size`, each independently flipped (with `flip`) and given `photometric`
  augmentation (`jitter`, `blur`, `solarize`; all off by default).

  Writes `crops_global` (num_global, G, G, C) and `crops_local` (num_local, L, L, C) uint8
  (none when num_global / num_local is 0) and drops `key`, unless `keep`: then `key` stays
  as it is (decoded), the view SigLIP 2's self-distillation teacher sees, and num_global
  may be 0. Takes bytes or a decoded array.
  """
  if num_global < 1 and not keep:
    raise ValueError(f"multi_crop(num_global={num_global}) needs at least one global crop "
                     "(or keep=True: the image itself is the global view).")
  if num_global < 1 and num_local < 1:
    raise ValueError("multi_crop(num_global=0, num_local=0) makes no crop.")
  decoder = decode(channels, key=key)
  crop_g = inception_crop(global_size, scale=global_scale, channels=None, key="_crop")
  crop_l = inception_crop(local_size, scale=local_scale, channels=None, key="_crop")

  def crops(img, name, crop_op, n, rng):
    out = []
    for _ in range(n):
      c = crop_op({"_crop": img, "key": name}, rng)["_crop"]
      if rng is not None:
        if flip and rng.random() < 0.5:
          c = _flip_lr(c)
        if jitter or blur or solarize:
          c = photometric(c, rng, jitter, blur, solarize)
      out.append(c)
    return np.stack(out)

  @touches(key, "crops_global", "crops_local")
  def op(ex, rng):
    if isinstance(ex[key], (bytes, bytearray, memoryview)):
      ex = decoder(ex, rng)
    img = np.asarray(ex[key] if keep else ex.pop(key))
    name = ex.get("key", "?")
    if keep:
      ex[key] = img
    if img.dtype != np.uint8:
      raise ValueError(f"multi_crop takes uint8 images (before value_range); got {img.dtype}.")
    if num_global:
      ex["crops_global"] = crops(img, name, crop_g, num_global, rng)
    if num_local:
      ex["crops_local"] = crops(img, name, crop_l, num_local, rng)
    return ex
  return op
