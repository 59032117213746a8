"""The tuxpaint source: caption files, alpha compositing and the hashed split on stamps written to
a tmp dir laid out like the package, and the installed package's counts."""

import os

import numpy as np
import pytest
from PIL import Image

from bigvl.data import sources
from bigvl.data import tuxpaint as tp

pytestmark = pytest.mark.unit

INSTALLED = os.path.isdir(os.path.join(tp.DEFAULT_DIR, "animals"))
needs_package = pytest.mark.skipif(not INSTALLED, reason=tp.INSTALL)

CAT_TXT = "A cat.\nfr.utf8=Un chat.\nde.utf8=Eine Katze.\npt_BR.utf8= Um gato. \nes.utf8=\n"


def write_stamp(root, rel, pixels=None, caption="A thing.", mode="RGBA"):
  """A stamp `rel` ("animals/cat") under root: rel.png (an image of `pixels`) and rel.txt."""
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.zeros((2, 2, 4), np.uint8) if pixels is None else pixels
  Image.fromarray(pixels, mode).save(path + ".png")
  if caption is not None:
    with open(path + ".txt", "w", encoding="utf-8") as f:
      f.write(caption)


def test_parse_captions():
  assert tp.parse_captions(CAT_TXT) == {"en": "A cat.", "fr": "Un chat.", "de": "Eine Katze.",
                                        "pt_BR": "Um gato."}
  assert tp.parse_captions("\ufeff\n  Tux.  \nca@valencia.utf8=Tux!\nnoise\n") == {
      "en": "Tux.", "ca@valencia": "Tux!"}
  assert tp.parse_captions("\n \n") == {}


def test_alpha_is_composited_on_white_and_padded_to_a_square(tmp_path):
  # 4 wide x 2 tall: fits a size-4 square unresampled, with one white row above and below.
  px = np.array([[[200, 100, 0, 128], [10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 255]],
                 [[255, 0, 0, 64], [0, 255, 0, 255], [0, 0, 255, 192], [9, 9, 9, 1]]], np.uint8)
  write_stamp(str(tmp_path), "animals/cat", px, CAT_TXT)
  src = tp.Tuxpaint("all", size=4, data_dir=str(tmp_path))
  img = src[0]["image"]
  assert img.shape == (4, 4, 3) and img.dtype == np.uint8
  np.testing.assert_array_equal(img[0], 255)
  np.testing.assert_array_equal(img[3], 255)
  # rgb * a/255 + 255 * (1 - a/255), rounded: 200*128/255 + 127 = 227.4 -> 227, ...
  np.testing.assert_array_equal(img[1], [[227, 177, 127], [10, 20, 30], [255, 255, 255],
                                         [0, 0, 0]])
  np.testing.assert_array_equal(img[2], [[255, 191, 191], [0, 255, 0], [63, 63, 255],
                                         [254, 254, 254]])
  assert not img.flags.writeable  # The cached copy cannot be changed by a pp.


def test_other_png_modes_and_resizing(tmp_path):
  la = np.zeros((50, 100, 2), np.uint8)
  la[..., 0], la[..., 1] = 0, 255  # Opaque black, 2:1.
  write_stamp(str(tmp_path), "a/black", la, mode="LA")
  pal = Image.new("P", (3, 3), 1)
  pal.putpalette([0, 0, 0, 255, 0, 0])
  pal.save(str(tmp_path / "a" / "clear.png"), transparency=1)  # Every pixel transparent.
  (tmp_path / "a" / "clear.txt").write_text("Nothing.")
  src = tp.Tuxpaint("all", size=8, data_dir=str(tmp_path))
  black, clear = src[0]["image"], src[1]["image"]
  assert src[0]["key"] == "a/black.png" and black.shape == (8, 8, 3)
  np.testing.assert_array_equal(black[2:6], 0)  # 100x50 -> 8x4, centred: rows 2-5.
  np.testing.assert_array_equal(black[:2], 255)
  np.testing.assert_array_equal(black[6:], 255)
  np.testing.assert_array_equal(clear, 255)


def test_languages_lang_option_and_skipped_stamps(tmp_path):
  root = str(tmp_path)
  write_stamp(root, "animals/cat", caption=CAT_TXT)
  write_stamp(root, "animals/dog", caption="A dog.\nfr.utf8=Un chien.\n")
  write_stamp(root, "food/apple", caption="An apple.\n")
  write_stamp(root, "food/apple_mirror", caption=None)       # No caption file: skipped.
  (tmp_path / "food" / "pear.svg").write_text("<svg/>")      # SVG only: skipped.
  (tmp_path / "food" / "pear.txt").write_text("A pear.")
  (tmp_path / "food" / "apple.svg").write_text("<svg/>")     # Has a PNG: not counted.
  en = tp.Tuxpaint("all", data_dir=root)
  assert [en[i]["key"] for i in range(len(en))] == [
      "animals/cat.png", "animals/dog.png", "food/apple.png"]
  assert en.skipped == {"svg_only": 1, "no_caption": 1, "no_lang": 0}
  assert en.languages() == {"en": 3, "fr": 2, "de": 1, "pt_BR": 1}
  fr = tp.Tuxpaint("all", lang="fr", data_dir=root)
  assert len(fr) == 2 and fr.skipped["no_lang"] == 1
  assert fr[1]["texts"] == ("Un chien.",) and fr[1]["lang"] == ("fr",)
  multi = sources.build(dict(name="tuxpaint", split="all", lang=["de", "en"], data_dir=root))
  assert multi[0]["texts"] == ("Eine Katze.", "A cat.") and multi[0]["lang"] == ("de", "en")
  assert multi[2]["texts"] == ("An apple.",)
  assert multi.texts() == ["Eine Katze.", "A cat.", "A dog.", "An apple."]
  tok = tp.Tuxpaint("all", lang="en", tokenizer_lang=("fr",), data_dir=root)
  assert tok.texts() == ["A cat.", "A dog.", "An apple.", "Un chat.", "Un chien."]
  assert tok[0]["texts"] == ("A cat.",)
  with pytest.raises(ValueError, match=r"no stamp with a caption in \('xx',\).*en, fr"):
    tp.Tuxpaint("all", lang="xx", data_dir=root)


def test_split_is_a_stable_hash_of_the_key(tmp_path):
  keys = [f"animals/a{i}.png" for i in range(2000)]
  splits = [tp.split_of(k) for k in keys]
  assert splits == [tp.split_of(k) for k in keys]
  assert 0.17 < splits.count("test") / len(keys) < 0.23
  # Pinned: a change of hash or threshold would reshuffle every user's split.
  assert [i for i in range(12) if tp.split_of(f"x/{i}.png") == "test"] == [7, 9]
  root = str(tmp_path)
  for i in range(30):
    write_stamp(root, f"c/s{i}", caption=f"Stamp {i}.")
  train, test, every = (tp.Tuxpaint(s, data_dir=root) for s in ("train", "test", "all"))
  tr = {train[i]["key"] for i in range(len(train))}
  te = {test[i]["key"] for i in range(len(test))}
  assert tr and te and not tr & te and tr | te == {every[i]["key"] for i in range(len(every))}
  assert all(tp.split_of(k) == "test" for k in te)


def test_missing_directory_and_bad_options(tmp_path, monkeypatch):
  with pytest.raises(OSError, match="apt-get install tuxpaint-stamps-default") as e:
    tp.Tuxpaint(data_dir=str(tmp_path / "nowhere"))
  assert "\n" not in str(e.value)
  monkeypatch.setenv(tp.DIR_ENV, str(tmp_path))
  with pytest.raises(OSError, match=f"No captioned PNG stamps under {tmp_path}"):
    tp.Tuxpaint()
  with pytest.raises(ValueError, match="Unknown tuxpaint split 'val'"):
    tp.Tuxpaint("val")


@needs_package
def test_installed_package_counts_and_split():
  every = tp.Tuxpaint("all")
  train, test = tp.Tuxpaint("train"), tp.Tuxpaint("test")
  assert len(every) == len(train) + len(test) > 700
  assert 0.15 < len(test) / len(every) < 0.25
  keys = lambda s: {s[i]["key"] for i in range(len(s))}
  assert not keys(train) & keys(test)
  assert every.skipped["svg_only"] > 100
  counts = every.languages()
  assert counts["en"] == len(every) and counts["fr"] > 700
  ex = test[0]
  assert ex["image"].shape == (64, 64, 3) and ex["texts"][0] and ex["lang"] == ("en",)
