"""The built-in `shapes` source: synthetic images of coloured shapes with one exact caption.

Each image (uint8, `size` x `size` x 3, black background) holds one or two filled shapes
(`circle`, `square`, `triangle`) in clearly distinct colours, never overlapping. Its one
caption is fully determined by the picture:

  one shape:  "a red circle."
  two shapes: "a red circle above a blue square."

Two shapes are always clearly apart on one axis (and close on the other), so exactly one
of `above` / `below` / `left of` / `right of` fits. They are named in palette order
(colour, then shape; two shapes never share both), so the relation is about the
first-named shape and the same picture can never get two different captions.

Example i of a split is a pure function of (split, i, options): random access, identical
across processes and numpy versions (the per-index random numbers come from a splitmix64
hash, not from a numpy bit generator). `train` and `test` use different hash keys, so they
are disjoint by construction. The layout and caption are sampled before anything is drawn,
which is what makes `texts()` cheap.

`task="color"` draws single shapes and labels each with its colour's index in
`class_names`; `templates` ("a {} circle.", ...) make a shape ensemble for zero-shot
colour classification.

`patch_labels=p` adds `patch_labels` (size/p * size/p,) int32, one label per p x p patch in
row-major order, from the pixel at the patch's centre: 0 for background, else 1 + the
index in `SHAPES` of the shape covering it (`patch_label="shape"`) or 1 + its colour's index
in `colors` (`patch_label="color"`): the targets of the `dense_probe` evaluator.
"""

from __future__ import annotations

import difflib
import functools

import numpy as np

from bigvl.registry import SOURCES

SHAPES = ("circle", "square", "triangle")
# Far apart in RGB so that even a tiny model (and the tests) can tell them apart.
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 215, 40),
    "white": (235, 235, 235),
    "purple": (150, 60, 200),
}
DEFAULT_COLORS = ("red", "green", "blue", "yellow")
COLOR_TEMPLATES = tuple(f"a {{}} {s}." for s in SHAPES)
SPLITS = {"train": 1, "test": 2}  # The split's hash key; different keys = disjoint streams.
DEFAULT_LENGTHS = {"train": 50_000, "test": 500}
TASKS = ("caption", "color")
RELATIONS = (("above", "below"), ("left of", "right of"))  # By axis: (first is lower, higher).

_MIN_SIZE = 20  # Sides >= 5 px: at 4 px a circle and a triangle are the same pixels.
_MARGIN = 1  # Pixels kept free at the image border.
_GAP = 2  # Minimum empty pixels between two shapes along their relation axis.
_DRAWS = 16  # Uniforms reserved per example; layouts use a fixed slot for each choice.
_SALT = 0x5A4E_5F53_4841_5045  # Versions the generator: changing it changes every example.


def _mix(z: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser on a uint64 array (wraps modulo 2**64 by design)."""
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def _uniforms(split_key: int, indices: np.ndarray) -> np.ndarray:
  """(len(indices), _DRAWS) floats in [0, 1): draw k of example i, a hash of (split, i, k)."""
  golden = np.uint64(0x9E3779B97F4A7C15)
  seed = _mix(np.array([_SALT ^ split_key], np.uint64))[0]
  counter = (np.asarray(indices, np.uint64)[:, None] * np.uint64(_DRAWS)
             + np.arange(1, _DRAWS + 1, dtype=np.uint64)[None, :])
  z = _mix(seed + counter * golden)  # Position `counter` of the splitmix64 stream of `seed`.
  return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _pick(u: float, k: int) -> int:
  """An integer in [0, k) from a uniform in [0, 1)."""
  return min(int(u * k), k - 1)


@functools.lru_cache(maxsize=None)
def _mask(shape: str, d: int) -> np.ndarray:
  """Boolean (d, d) mask of `shape` filling a d x d box (pixel centres inside the shape)."""
  yy, xx = np.mgrid[0:d, 0:d] + 0.5
  if shape == "circle":
    return (yy - d / 2) ** 2 + (xx - d / 2) ** 2 <= (d / 2) ** 2
  if shape == "square":
    return np.ones((d, d), bool)
  # Triangle, apex up: row r is 2 * (r + 1) / 2 wide, so the last row spans the box.
  return np.abs(xx - d / 2) <= (yy + 0.5) / 2


@SOURCES.register("shapes")
class Shapes:
  """Random-access synthetic shape images with one exact caption each.

  Args:
    split: "train" or "test" (disjoint by construction).
    n: number of examples (default 50_000 for train, 500 for test).
    size: image side in pixels (>= 20); shapes are 1/4 to 3/8 of it across.
    max_shapes: 1 (single shapes only) or 2. Default 2 for task "caption", 1 for "color".
    task: "caption" (label -1) or "color" (single shapes, label = colour index).
    colors: colour names used, from PALETTE (default red, green, blue, yellow).
  """

  def __init__(self, split: str = "train", n: int | None = None, size: int = 32,
               max_shapes: int | None = None, task: str = "caption",
               colors: tuple[str, ...] | list[str] | None = None,
               patch_labels: int | None = None, patch_label: str = "shape"):
    if split not in SPLITS:
      raise ValueError(f"Unknown shapes split {split!r}; valid: {tuple(SPLITS)}.")
    if task not in TASKS:
      raise ValueError(f"Unknown shapes task {task!r}; valid: {TASKS}.")
    colors = tuple(DEFAULT_COLORS if colors is None else colors)
    for c in colors:
      if c not in PALETTE:
        close = difflib.get_close_matches(str(c), PALETTE, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown shapes colour {c!r}.{hint} Valid: {tuple(PALETTE)}.")
    if not colors or len(set(colors)) != len(colors):
      raise ValueError(f"shapes colors={colors!r}: give one or more distinct colour names "
                       f"from {tuple(PALETTE)}.")
    if max_shapes is None:
      max_shapes = 1 if task == "color" else 2
    if max_shapes not in (1, 2):
      raise ValueError(f"shapes max_shapes={max_shapes!r}: use 1 or 2.")
    if task == "color" and max_shapes != 1:
      raise ValueError("shapes task='color' labels the colour of a single shape; "
                       "drop max_shapes or set max_shapes=1.")
    if not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
      raise ValueError(f"shapes size={size!r}: use an integer >= {_MIN_SIZE} "
                       "(smaller shapes are not recognisable).")
    if patch_labels is not None and (not isinstance(patch_labels, (int, np.integer))
                                     or patch_labels < 1 or size % patch_labels):
      raise ValueError(f"shapes patch_labels={patch_labels!r}: give the patch size, an "
                       f"integer that divides size={size}.")
    if patch_label not in ("shape", "color"):
      raise ValueError(f"shapes patch_label={patch_label!r}; valid: shape, color.")
    n = DEFAULT_LENGTHS[split] if n is None else n
    if not isinstance(n, (int, np.integer)) or n < 1:
      raise ValueError(f"shapes n={n!r}: use a positive integer, or None for the default "
                       f"({DEFAULT_LENGTHS[split]} for {split}).")
    self.split = split
    self.n = int(n)
    self.size = int(size)
    self.max_shapes = int(max_shapes)
    self.task = task
    self.colors = colors
    self.patch_labels, self.patch_label = patch_labels, patch_label
    # Shape side range; two of the largest plus gap and margins still fit across the image.
    self._lo = max(4, round(self.size / 4))
    self._hi = max(self._lo, min(round(self.size * 3 / 8), (self.size - 2 * _MARGIN - _GAP) // 2))
    if task == "color":
      self.class_names = colors
      self.templates = COLOR_TEMPLATES
    else:
      self.class_names = None
      self.templates = None

  def __len__(self) -> int:
    return self.n

  def _index(self, i) -> int:
    if not isinstance(i, (int, np.integer)):
      raise TypeError(f"shapes indices are integers, got {type(i).__name__}.")
    i = int(i)
    if i < 0:
      i += self.n
    if not 0 <= i < self.n:
      raise IndexError(f"shapes index {i} out of range for {self!r}.")
    return i

  def _layout(self, u) -> tuple[list[tuple[int, int, int, int, int]], str]:
    """Shapes as (colour index, shape index, y, x, side) and the caption, from uniforms `u`.

    Each choice reads its own fixed slot of `u`, so layouts never depend on draw order.
    """
    size, m = self.size, _MARGIN
    n_shapes = 1 if self.max_shapes == 1 else 1 + _pick(u[0], 2)
    n_pairs = len(self.colors) * len(SHAPES)
    first = _pick(u[1], n_pairs)
    if n_shapes == 1:
      d = self._lo + _pick(u[3], self._hi - self._lo + 1)
      y = m + _pick(u[5], size - 2 * m - d + 1)
      x = m + _pick(u[6], size - 2 * m - d + 1)
      c, s = divmod(first, len(SHAPES))
      return [(c, s, y, x, d)], f"a {self.colors[c]} {SHAPES[s]}."
    # Two different (colour, shape) pairs, so the palette order below names them uniquely.
    second = _pick(u[2], n_pairs - 1)
    second += second >= first
    named = sorted((first, second))  # Named in palette order, whatever their positions.
    sides = [self._lo + _pick(u[k], self._hi - self._lo + 1) for k in (3, 4)]
    axis = _pick(u[7], 2)  # 0: relation along y (above/below); 1: along x (left/right).
    lead = _pick(u[8], 2)  # Which named shape comes first (top or left) on that axis.
    order = (lead, 1 - lead)
    d_a, d_b = sides[order[0]], sides[order[1]]
    # Main axis: free pixels split at two sorted cut points into before / extra gap / after.
    slack = size - 2 * m - _GAP - d_a - d_b
    cut1, cut2 = sorted((_pick(u[9], slack + 1), _pick(u[10], slack + 1)))
    p_a = m + cut1
    p_b = p_a + d_a + _GAP + (cut2 - cut1)
    # Off axis: the second centre stays within a third of the main-axis centre distance, so
    # the relation axis dominates even after a triangle's centroid shift.
    q_a = m + _pick(u[11], size - 2 * m - d_a + 1)
    c_a = q_a + d_a / 2
    limit = ((p_b + d_b / 2) - (p_a + d_a / 2)) / 3
    lo = max(m, int(np.ceil(c_a - limit - d_b / 2)))
    hi = min(size - m - d_b, int(np.floor(c_a + limit - d_b / 2)))
    if lo <= hi:
      q_b = lo + _pick(u[12], hi - lo + 1)
    else:  # Only when the box edge cuts the window: take the closest in-image position.
      q_b = int(np.clip(round(c_a - d_b / 2), m, size - m - d_b))
    placed = {}
    for k, p, q in ((order[0], p_a, q_a), (order[1], p_b, q_b)):
      y, x = (p, q) if axis == 0 else (q, p)
      c, s = divmod(named[k], len(SHAPES))
      placed[k] = (c, s, y, x, sides[k])
    rel = RELATIONS[axis][0 if lead == 0 else 1]
    (c0, s0, *_), (c1, s1, *_) = placed[0], placed[1]
    caption = (f"a {self.colors[c0]} {SHAPES[s0]} {rel} "
               f"a {self.colors[c1]} {SHAPES[s1]}.")
    return [placed[0], placed[1]], caption

  def _draw(self, shapes) -> np.ndarray:
    image = np.zeros((self.size, self.size, 3), np.uint8)
    for c, s, y, x, d in shapes:
      image[y:y + d, x:x + d][_mask(SHAPES[s], d)] = PALETTE[self.colors[c]]
    return image

  def _label_map(self, shapes) -> np.ndarray:
    """(size, size) int32: 0 background, 1 + shape (or colour) index where a shape is."""
    labels = np.zeros((self.size, self.size), np.int32)
    for c, s, y, x, d in shapes:
      labels[y:y + d, x:x + d][_mask(SHAPES[s], d)] = 1 + (s if self.patch_label == "shape"
                                                          else c)
    return labels

  def __getitem__(self, i) -> dict:
    i = self._index(i)
    shapes, caption = self._layout(_uniforms(SPLITS[self.split], np.array([i]))[0].tolist())
    label = shapes[0][0] if self.task == "color" else -1
    ex = {"key": f"shapes/{self.split}/{i}", "image": self._draw(shapes),
          "texts": (caption,), "label": np.int32(label)}
    if self.patch_labels:
      p = self.patch_labels
      ex["patch_labels"] = self._label_map(shapes)[p // 2::p, p // 2::p].reshape(-1)
    return ex

  def texts(self) -> list[str]:
    """Every caption of the split in index order (for tokenizer training); draws no pixels."""
    out = []
    for start in range(0, self.n, 8192):  # Chunks bound the memory of the uniforms table.
      u = _uniforms(SPLITS[self.split], np.arange(start, min(start + 8192, self.n)))
      out.extend(self._layout(row)[1] for row in u.tolist())
    return out

  def __repr__(self):
    return (f"Shapes(split={self.split!r}, n={self.n}, size={self.size}, "
            f"max_shapes={self.max_shapes}, task={self.task!r}, colors={self.colors!r}"
            + (f", patch_labels={self.patch_labels}, patch_label={self.patch_label!r}"
               if self.patch_labels else "") + ")")
