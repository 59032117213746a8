"""The README's example config is real: it loads and trains."""

import os
import re

import pytest

from bigvl import config_lib, metrics, train
from conftest import REPO

pytestmark = pytest.mark.integration


def test_readme_example_config_trains(tmp_path):
  readme = open(os.path.join(REPO, "README.md")).read()
  code = re.search(r"```python\n(# configs/my_clip.py\n.*?)```", readme, re.S).group(1)
  path = tmp_path / "my_clip.py"
  path.write_text(code)
  config = config_lib.apply_overrides(config_lib.load_config_file(f"{path}"),
                                      [("total_steps", "20"), ("log_every", "10")])
  last = train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert 0.0 <= last["eval/zeroshot/top1"] <= 1.0
  rows = metrics.read_jsonl(str(tmp_path / "wd" / "metrics.jsonl"))
  assert [r["step"] for r in rows if "train/loss" in r] == [10, 20]


def test_readme_own_data_commands_work(tmp_path):
  """The "Your own data" section: its two commands and its config snippet, on a small folder."""
  import subprocess
  import sys

  import ml_collections

  from bigvl.data import loader, tokenizer as tok_lib
  from test_make_dataset import make_folder

  readme = open(os.path.join(REPO, "README.md")).read()
  section = readme.split("## Your own data")[1].split("\n## ")[0]
  shell = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  images, captions, _, _ = make_folder(tmp_path / "raw")
  paths = {"/raw/mine/images": str(images), "/raw/mine/captions.jsonl": str(captions),
           "/data/mine": str(tmp_path / "mine")}
  for old, new in paths.items():
    shell, snippet = shell.replace(old, new), snippet.replace(old, new)
  for command in shell.replace("\\\n", " ").strip().splitlines():
    argv = command.split()
    assert argv[0] == "python"
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
  config = ml_collections.ConfigDict({"data": {"train": {}, "tokenizer": ""}})
  exec(snippet, {"config": config})
  tok = tok_lib.Tokenizer.load(config.data.tokenizer)
  batch = loader.train_dataset(config.data.train, batch_size=4, seed=0,
                               context=dict(tokenizer=tok, text_len=16))[0].inputs
  assert batch["image"].shape == (4, 224, 224, 3) and batch["text"].shape == (4, 16)
