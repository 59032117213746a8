"""Faults in a checkpoint's parts (issue 18): silent bit rot in the train state (item 2), a
damaged data-iterator state (item 3)."""

import shutil

import numpy as np
import pytest

from bigvl import checkpoint
from conftest import DEMO_SIGLIP, run_bigvl
from test_reliability import FAST

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ARGS = ["--config", DEMO_SIGLIP, "--config.total_steps=40", *FAST]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 40-step run (checkpoints 20, 30, 40) and its final params."""
  workdir = tmp_path_factory.mktemp("finished")
  run_bigvl([*ARGS, "--workdir", str(workdir)], check=True)
  return workdir, checkpoint.load_params(str(workdir))


def _rewound_to_30(finished, tmp_path):
  """A copy of the run as if killed after step 30's checkpoint."""
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  shutil.rmtree(workdir / "checkpoints" / "40")
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("garbage", [b"{not json", b"", b'["a list"]', b'{"grain": 3}'])
def test_damaged_data_iterator_state_resumes_by_indexing_the_stream(finished, tmp_path, garbage):
  workdir = _rewound_to_30(finished, tmp_path)
  (workdir / "checkpoints" / "30" / "data" / "process_0-of-1.json").write_bytes(garbage)
  out = run_bigvl([*ARGS, "--workdir", str(workdir)], check=True).stdout
  assert "Resumed from checkpoint step 30" in out
  assert "Saved data iterator state not used" in out and "indexing the data stream at step 30" in out
  params = checkpoint.load_params(str(workdir))
  for k, v in finished[1].items():
    assert np.array_equal(params[k], v), k


def _data_files(step_dir):
  return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and
                p.stat().st_size > 1000 and "/d/" in str(p))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_flipped_bit_is_caught_and_the_previous_checkpoint_restored(finished, tmp_path, seed):
  import random
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  for step in (20, 30, 40):  # Every save wrote its checksums once committed.
    assert (workdir / "checkpoints" / str(step) / "checksums.json").exists()
  rng = random.Random(seed)
  victim = rng.choice(_data_files(workdir / "checkpoints" / "40"))
  data = bytearray(victim.read_bytes())
  at = rng.randrange(len(data))
  data[at] ^= 1 << rng.randrange(8)
  victim.write_bytes(bytes(data))
  out = run_bigvl([*ARGS, "--workdir", str(workdir)], check=True)
  text = out.stdout + out.stderr
  assert "cannot be restored (DamagedError: checksum mismatch" in text, text
  assert "Resumed from checkpoint step 30" in text
  aside = list((workdir / "corrupt_checkpoints").iterdir())
  assert len(aside) == 1 and aside[0].name.startswith("40-")
  params = checkpoint.load_params(str(workdir))
  for k, v in finished[1].items():
    assert np.array_equal(params[k], v), k
