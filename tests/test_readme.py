"""The README's example config is real: it loads and trains."""

import os
import re

from bigvl import config_lib, metrics, train
from conftest import REPO


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
