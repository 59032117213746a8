"""A data mixture, written as docs/data.md documents it, trains through `python -m bigvl.train`
and evaluates through `python -m bigvl.eval`; the logged per-source example counts follow the
mixture weights."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bigvl import metrics
from conftest import DEMO_SIGLIP, REPO, run_bigvl
from test_make_dataset import make_folder, run as make_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # Two subprocess runs: ~2 minutes.

STEPS, BATCH, LOG_EVERY = 60, 32, 10
WEIGHTS = {"digits": 0.7, "mine": 0.3}

CONFIG = '''
from bigvl import config_lib

def get_config(arg=None):
  c = config_lib.load_config_file({demo!r} + ":steps={steps},batch={batch}")
  c.log_every = {log_every}
  c.checkpoint_every = {steps}
  c.eval_every = {steps}
  c.data.train = dict(
      # Each component brings its images to 16x16 grey; then the shared pp.
      pp="value_range(-1, 1)|choose_text|tokenize|keep('image', 'text')",
      mixture=dict(
          digits=dict(name="digits", split="train", weight={w_digits}, pp="resize(16)"),
          mine=dict(name="shards", data_dir={data_dir!r}, split="train", weight={w_mine},
                    pp="decode(1)|resize(16)")))
  return c
'''


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("mixture")
  images, captions, _, _ = make_folder(root / "raw")
  code, log = make_dataset(["--out", root / "ds", "--images", images, "--captions", captions])
  assert code == 0, log
  config = root / "mixture_config.py"
  config.write_text(CONFIG.format(demo=DEMO_SIGLIP, steps=STEPS, batch=BATCH,
                                  log_every=LOG_EVERY, data_dir=str(root / "ds"),
                                  w_digits=WEIGHTS["digits"], w_mine=WEIGHTS["mine"]))
  workdir = root / "wd"
  proc = run_bigvl(["--config", str(config), "--workdir", str(workdir)], check=True)
  return workdir, proc


def test_mixture_trains_from_the_cli_and_logs_counts_that_follow_the_weights(mixture_run):
  workdir, proc = mixture_run
  rows = [r for r in metrics.read_jsonl(str(workdir / "metrics.jsonl")) if "train/loss" in r]
  assert [r["step"] for r in rows] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
  assert all(np.isfinite(r["train/loss"]) for r in rows)
  # Each row counts the examples of each source since the previous row.
  for r in rows:
    assert sum(r[f"data/source_examples/{n}"] for n in WEIGHTS) == LOG_EVERY * BATCH
  n = STEPS * BATCH
  for name, w in WEIGHTS.items():
    count = sum(r[f"data/source_examples/{name}"] for r in rows)
    std = np.sqrt(n * w * (1 - w))
    print(f"source {name}: {count:.0f} of {n} examples, expected {n * w:.0f} +- {std:.1f}")
    assert abs(count - n * w) <= 3 * std, (name, count, n * w, std)
  # The tokenizer was trained on both sources' captions (digits', then the shards').
  from bigvl.data import digits, shards, tokenizer as tok_lib
  mine = shards.ShardSource(data_dir=str(workdir.parent / "ds"), split="train").texts()
  ref = tok_lib.train(digits.Digits("train").texts() + mine, vocab_size=96)
  tok = tok_lib.Tokenizer.load(str(workdir / "tokenizer.model"))
  assert tok.vocab_size == ref.vocab_size
  np.testing.assert_array_equal(tok.encode(mine, 16), ref.encode(mine, 16))


def test_mixture_run_evaluates_from_the_cli_with_the_numbers_it_logged(mixture_run):
  workdir, _ = mixture_run
  logged = {k: v for r in metrics.read_jsonl(str(workdir / "metrics.jsonl"))
            if r["step"] == STEPS for k, v in r.items() if k.startswith("eval/")}
  assert logged, "the run logged no evaluation at its last step"
  proc = subprocess.run([sys.executable, "-m", "bigvl.eval", "--workdir", str(workdir)],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  saved = json.loads((workdir / "eval_results" / f"step_{STEPS}.json").read_text())
  for k, v in logged.items():
    assert saved[k] == pytest.approx(v, abs=1e-6), k
