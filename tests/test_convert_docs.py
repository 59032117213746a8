"""The zero-shot snippet of docs/convert.md runs as written, on a tiny converted CLIP."""

import os
import re

import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

from bigvl import convert  # noqa: E402

pytestmark = pytest.mark.unit

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "convert.md")
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


def zero_shot_snippet() -> str:
  with open(DOC) as f:
    text = f.read()
  section = text.split("## Zero-shot classification", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_snippet_is_ten_lines_or_so():
  assert len(zero_shot_snippet().strip().splitlines()) <= 12


def test_readme_shows_the_same_snippet():
  with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
    readme = f.read()
  assert "```python\n" + zero_shot_snippet() + "```" in readme


def test_zero_shot_snippet_runs(tmp_path, monkeypatch, capsys):
  # The snippet's own paths, relative to a scratch directory: a converted CLIP with CLIP's
  # real vocabulary and context (so open_clip's tokenizer fits) and a photo.
  monkeypatch.chdir(tmp_path)
  cfg = transformers.CLIPConfig(text_config=dict(TINY), projection_dim=16,
                                vision_config=dict(TINY, image_size=32, patch_size=8))
  torch.manual_seed(0)
  transformers.CLIPModel(cfg).save_pretrained("hf")
  convert.from_hf("hf", "converted/clip-b32", progress=lambda _: None)
  pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
  Image.fromarray(pixels).save("cat.jpg")

  exec(compile(zero_shot_snippet(), DOC, "exec"), {})
  printed = capsys.readouterr().out.strip()
  assert re.fullmatch(r"\['(cat|dog|car)'\]", printed), printed


def test_preprocess_resizes_crops_and_normalises():
  meta = dict(image_size=8, image_mean=[0.5, 0.25, 0.0], image_std=[0.5, 0.25, 1.0])
  gray = np.full((2, 12, 20, 3), 153, np.uint8)  # 0.6 everywhere.
  out = np.asarray(convert.preprocess(gray, meta))
  assert out.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(out[0, 3, 3], [(0.6 - 0.5) / 0.5, (0.6 - 0.25) / 0.25, 0.6],
                             atol=1e-5)
