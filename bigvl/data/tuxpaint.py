"""The `tuxpaint` source: Tux Paint's stamps, clip art with captions in up to 78 languages.

    apt-get install tuxpaint-stamps-default   # -> /usr/share/tuxpaint/stamps (GPL-2)

A stamp is `<category>/.../<name>.png` (or `.svg`) with `<name>.txt` beside it: its English
caption on the first line, then one translation a line, `fr.utf8=Une pièce de monnaie ...`.
Each record is one PNG stamp with a caption file: `image` uint8 (size, size, 3), the stamp
alpha-composited on white and fitted into the square keeping its aspect (padded with
white); `texts` its captions in the languages of `lang`; `lang` their language codes;
`key` the PNG's path relative to the stamps directory; `label` -1.

Skipped (counted in `skipped`): SVG-only stamps (no SVG rasteriser is a dependency),
PNGs without a caption file (Tux Paint's `_mirror` variants and a few others), and
stamps with no caption in `lang`. The split is a stable hash of `key`: `test` the 20%
whose SHA-256 falls below 0.2, `train` the rest, `all` both; the same on every machine
and independent of which other stamps are installed.

Options: `split`, `lang` ("en" = the first line; a code as in the files, "fr", "pt_BR",
"ca@valencia"; or a list of them: a stamp is kept if it has any, `texts` in list order),
`size` (default 64), `tokenizer_lang` (more languages whose captions `texts()` also
gives, for a tokenizer that must cover them; the records keep `lang` only), `data_dir`
(else $BIGVL_TUXPAINT_DIR, else the package's directory). `languages()` counts the stamps
with a caption in each language.
"""

from __future__ import annotations

import collections
import hashlib
import os

import numpy as np

from bigvl.registry import SOURCES

DEFAULT_DIR = "/usr/share/tuxpaint/stamps"
DIR_ENV = "BIGVL_TUXPAINT_DIR"
INSTALL = "apt-get install tuxpaint-stamps-default"
SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.2
ENGLISH = "en"  # The first line of a caption file (Tux Paint's untranslated text, US English).
_TRANSLATION = ".utf8="  # "fr.utf8=Une pièce ..." -> language "fr".


class TuxpaintError(OSError):
  """The stamps directory is missing or has no stamps; the message says how to install it."""


def resolve_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else $BIGVL_TUXPAINT_DIR, else the Debian package's directory."""
  return data_dir or os.environ.get(DIR_ENV) or DEFAULT_DIR


def parse_captions(text: str) -> dict[str, str]:
  """The text of a stamp's caption file -> {language: caption}.

  The first non-empty line is "en"; a later line `<code>.utf8=<caption>` is language
  <code> ("fr", "pt_BR", "sr@latin"). Empty captions and other lines are left out.
  """
  out: dict[str, str] = {}
  lines = text.lstrip("\ufeff").splitlines()
  first = next((i for i, line in enumerate(lines) if line.strip()), None)
  if first is None:
    return out
  out[ENGLISH] = lines[first].strip()
  for line in lines[first + 1:]:
    code, sep, caption = line.partition(_TRANSLATION)
    if sep and code.strip() and caption.strip():
      out[code.strip()] = caption.strip()
  return out


def split_of(key: str, test_fraction: float = TEST_FRACTION) -> str:
  """"test" or "train" for the stamp `key` (its relative path): the first 8 bytes of its
  SHA-256 as a fraction of 2**64, below `test_fraction` is test. Python's hash() would
  change from one process to the next."""
  h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
  return "test" if h / 2.0 ** 64 < test_fraction else "train"


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 4) straight (not premultiplied) alpha -> uint8 (H, W, 3) over white:
  rgb * a + 255 * (1 - a), rounded to nearest."""
  rgb = rgba[..., :3].astype(np.float32)
  a = rgba[..., 3:].astype(np.float32) / 255.0
  return np.round(rgb * a + 255.0 * (1.0 - a)).astype(np.uint8)


def fit_square(image, size: int) -> np.ndarray:
  """A PIL image -> uint8 (size, size, 3): scaled so its longer side is `size` (bicubic, in
  premultiplied alpha, so transparent pixels' colours do not bleed), composited on white,
  centred on a white square. An image whose longer side is already `size` is not resampled."""
  from PIL import Image
  im = image.convert("RGBA")  # P with a transparent index, LA, RGB with tRNS: all to RGBA.
  w, h = im.size
  scale = size / max(w, h)
  if max(w, h) != size:
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
  rgb = composite_on_white(np.asarray(im))
  out = np.full((size, size, 3), 255, np.uint8)
  top, left = (size - rgb.shape[0]) // 2, (size - rgb.shape[1]) // 2
  out[top:top + rgb.shape[0], left:left + rgb.shape[1]] = rgb
  return out


def load_stamp(path: str, size: int) -> np.ndarray:
  """The PNG at `path` as uint8 (size, size, 3), see `fit_square`."""
  from PIL import Image
  with Image.open(path) as im:
    im.load()
    return fit_square(im, size)


def scan(data_dir: str) -> tuple[list[tuple[str, dict[str, str]]], dict[str, int]]:
  """([(key, {lang: caption})] of every PNG stamp with a caption file, sorted by key;
  {"svg_only": n, "no_caption": n} of the stamps left out). Reads only the caption files."""
  if not os.path.isdir(data_dir):
    raise TuxpaintError(f"Tux Paint stamps not found at {data_dir}: {INSTALL} (or set "
                        f"data_dir=... / ${DIR_ENV} to a stamps directory).")
  stamps, skipped = [], {"svg_only": 0, "no_caption": 0}
  for root, dirs, files in os.walk(data_dir):
    dirs.sort()  # Walk order does not matter (keys are sorted), but keep it reproducible.
    names = set(files)
    for f in sorted(files):
      stem, ext = os.path.splitext(f)
      if ext == ".svg" and stem + ".png" not in names:
        skipped["svg_only"] += 1
      if ext != ".png":
        continue
      if stem + ".txt" not in names:
        skipped["no_caption"] += 1
        continue
      with open(os.path.join(root, stem + ".txt"), encoding="utf-8", errors="replace") as fh:
        captions = parse_captions(fh.read())
      if captions:
        key = os.path.relpath(os.path.join(root, f), data_dir).replace(os.sep, "/")
        stamps.append((key, captions))
      else:
        skipped["no_caption"] += 1
  if not stamps:
    raise TuxpaintError(f"No captioned PNG stamps under {data_dir}: {INSTALL} (or point "
                        f"data_dir=... / ${DIR_ENV} at a stamps directory).")
  stamps.sort(key=lambda s: s[0])
  return stamps, skipped


@SOURCES.register("tuxpaint")
class Tuxpaint:
  """Random-access Tux Paint stamp records for one split; images are decoded on first use
  and kept on the instance (about 0.1 MB each at size 64)."""

  def __init__(self, split: str = "train", lang="en", size: int = 64, tokenizer_lang=(),
               data_dir: str | None = None):
    if split not in SPLITS:
      raise ValueError(f"Unknown tuxpaint split {split!r}; valid: {SPLITS}.")
    if size < 1:
      raise ValueError(f"tuxpaint size={size}; give the image side in pixels, >= 1.")
    self.split, self.size = split, int(size)
    self.langs = (lang,) if isinstance(lang, str) else tuple(lang)
    self.tokenizer_langs = ((tokenizer_lang,) if isinstance(tokenizer_lang, str)
                            else tuple(tokenizer_lang))
    if not self.langs:
      raise ValueError("tuxpaint lang=(): give a language, e.g. 'en' or ('en', 'fr').")
    self.data_dir = resolve_dir(data_dir)
    stamps, skipped = scan(self.data_dir)
    in_split = [(k, c) for k, c in stamps if split == "all" or split_of(k) == split]
    self._split_captions = [c for _, c in in_split]
    self._keys, self._texts, self._text_langs = [], [], []
    for key, captions in in_split:
      present = tuple(l for l in self.langs if l in captions)
      if present:
        self._keys.append(key)
        self._texts.append(tuple(captions[l] for l in present))
        self._text_langs.append(present)
    self.skipped = dict(skipped, no_lang=len(in_split) - len(self._keys))
    if not self._keys:
      counts = self.languages()
      raise ValueError(f"tuxpaint split {split!r} has no stamp with a caption in {self.langs}; "
                       f"languages with most stamps: {', '.join(list(counts)[:10])}.")
    self._images: list[np.ndarray | None] = [None] * len(self._keys)

  def __len__(self) -> int:
    return len(self._keys)

  def image(self, i: int) -> np.ndarray:
    """Stamp i as uint8 (size, size, 3), decoded once (read-only: the cache is shared)."""
    if self._images[i] is None:
      img = load_stamp(os.path.join(self.data_dir, self._keys[i]), self.size)
      img.flags.writeable = False
      self._images[i] = img
    return self._images[i]

  def __getitem__(self, i: int) -> dict:
    if not -len(self) <= i < len(self):
      raise IndexError(f"tuxpaint index {i} out of range [0, {len(self)}).")
    i %= len(self)
    return {"image": self.image(i), "texts": self._texts[i], "lang": self._text_langs[i],
            "key": self._keys[i], "label": np.int32(-1)}

  def texts(self) -> list[str]:
    """Every caption of the split in `lang`, then those in `tokenizer_lang` (for tokenizer
    training only: the records never carry them)."""
    out = [t for ts in self._texts for t in ts]
    for l in self.tokenizer_langs:
      out += [c[l] for c in self._split_captions if l in c]
    return out

  def languages(self) -> dict[str, int]:
    """{language: stamps of this split with a caption in it}, most first ("en" is every
    stamp); counted before `lang` filters the records."""
    counts = collections.Counter(l for c in self._split_captions for l in c)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

  def __repr__(self):
    return (f"Tuxpaint(split={self.split!r}, lang={self.langs}, n={len(self)}, "
            f"size={self.size})")
