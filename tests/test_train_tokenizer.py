"""tools/train_tokenizer.py: a sentencepiece model from a text file, shards, or a source."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bigvl.data import make_dataset
from bigvl.data.tokenizer import Tokenizer
from conftest import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "train_tokenizer.py")
CAPTIONS = [
    "an astronaut in a white suit in front of a flag",
    "a cup of coffee on a saucer",
    "a cat looking at the camera",
    "a rocket standing on the launch pad",
    "a man with a camera on a tripod",
    "a handwritten digit seven on white paper",
]


@pytest.fixture(scope="module")
def tool():
  return load_tool("train_tokenizer")


def _roundtrips(path, text):
  tok = Tokenizer.load(path)
  assert tok.decode(tok.encode(text, 64)) == text
  return tok


@pytest.mark.unit
def test_from_text_file(tmp_path, tool, capsys):
  (tmp_path / "c.txt").write_text("\n".join(CAPTIONS * 5) + "\n\n")
  out = tmp_path / "tok" / "t.model"
  assert tool.main(["--out", str(out), "--vocab_size", "80", "--text_file",
                    str(tmp_path / "c.txt"), "--text_len", "8"]) == 0
  printed = capsys.readouterr().out
  tok = _roundtrips(str(out), CAPTIONS[1])
  assert f"vocabulary size {tok.vocab_size}" in printed and "30 texts" in printed
  assert "longer than 8 tokens" in printed


@pytest.mark.unit
def test_from_shards(tmp_path, tool, capsys):
  from skimage import data as skdata
  rows = []
  for i, (name, caption) in enumerate(zip(("astronaut", "coffee", "chelsea", "rocket"), CAPTIONS)):
    img = Image.fromarray(getattr(skdata, name)())
    img.thumbnail((32, 32))
    img.save(tmp_path / f"{name}.jpg")
    rows.append({"image": f"{name}.jpg", "captions": [caption, f"{name} photo {i}"]})
  (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert make_dataset.main(["--out", str(tmp_path / "ds"), "--images", str(tmp_path),
                            "--captions", str(tmp_path / "c.jsonl")], log=io.StringIO()) == 0
  out = str(tmp_path / "t.model")
  assert tool.main(["--out", out, "--vocab_size", "60", "--model_type", "unigram",
                    "--dataset", str(tmp_path / "ds"), "--split", "train"]) == 0
  assert "8 texts" in capsys.readouterr().out
  _roundtrips(out, "a cup of coffee")


@pytest.mark.unit
def test_from_a_registered_source_and_errors(tmp_path, tool, capsys):
  out = str(tmp_path / "d.model")
  assert tool.main(["--out", out, "--vocab_size", "48", "--source", "digits",
                    "--source_arg", "split=test"]) == 0
  assert "1800 texts" in capsys.readouterr().out  # 360 test scans x 5 templates.
  ids = _roundtrips(out, "a photo of the digit seven.").encode(["the number two."], 16)
  assert ids.shape == (1, 16) and np.all(ids[0, :1] > 2)
  assert tool.main(["--out", out, "--vocab_size", "48", "--source", "digits",
                    "--source_arg", "splt=test"]) == 2
  assert "Unknown option 'splt'" in capsys.readouterr().err
  assert tool.main(["--out", out, "--vocab_size", "48", "--dataset", str(tmp_path / "none")]) == 2
  assert "make_dataset" in capsys.readouterr().err


@pytest.mark.integration
def test_cli_runs_as_a_script(tmp_path):
  (tmp_path / "c.txt").write_text("\n".join(CAPTIONS) + "\n")
  proc = subprocess.run([sys.executable, TOOL, "--out", str(tmp_path / "t.model"),
                         "--vocab_size", "40", "--text_file", str(tmp_path / "c.txt")],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "6 texts" in proc.stdout
  proc = subprocess.run([sys.executable, TOOL, "--out", "x.model", "--vocab_size", "40"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "one of the arguments" in proc.stderr
