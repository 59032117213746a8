"""Every notebook in colabs/ runs end to end in its TINY mode, writes its plot and its
numbers, and shows learning where it trains. Acceptance 1 of issue 10."""

import json
import os

import pytest

from conftest import REPO, missing_real_data

pytestmark = pytest.mark.integration

COLABS = os.path.join(REPO, "colabs")


def _execute(name, out, monkeypatch):
  import nbclient
  import nbformat
  monkeypatch.setenv("BIGVL_COLAB_MODE", "tiny")
  monkeypatch.setenv("BIGVL_COLAB_OUT", str(out))
  monkeypatch.setenv("BIGVL_REPO", REPO)
  nb = nbformat.read(os.path.join(COLABS, f"{name}.ipynb"), as_version=4)
  nbclient.NotebookClient(nb, timeout=1500, kernel_name="python3",
                          resources={"metadata": {"path": COLABS}}).execute()
  assert os.path.getsize(out / f"{name}.png") > 10_000
  with open(out / f"{name}.json") as f:
    return json.load(f), nb


def _printed(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))


def _skip_without_fashion_mnist():
  install = missing_real_data("fashion_mnist")
  if install:
    pytest.skip(install)


@pytest.mark.colab  # Not in CI (time): pytest -m colab.
def test_siglip_vs_clip_notebook(tmp_path, monkeypatch):
  _skip_without_fashion_mnist()
  results, nb = _execute("siglip_vs_clip", tmp_path, monkeypatch)
  print(results)
  assert results["seeds"] == [0, 1, 2]
  for loss in ("sigmoid", "softmax"):
    assert sorted(int(b) for b in results[loss]) == [4, 16]
    assert all(len(v) == 3 for v in results[loss].values())
    # Both losses learn: well above chance (0.1) at batch 16 on every seed (measured 0.66+).
    assert min(results[loss]["16"]) > 0.5, results
  # The SigLIP paper's direction (sigmoid >= softmax at the smallest batch) did not hold over
  # 3 seeds when measured (batch 4: 1 seed of 3; softmax ahead on average at 4, 8, 16, 32 and
  # at 3000 steps), so it is not asserted; the notebook prints the numbers and says so.
  printed = _printed(nb)
  assert "sigmoid - softmax" in printed


@pytest.mark.colab  # Not in CI (time): pytest -m colab.
def test_lit_notebook(tmp_path, monkeypatch):
  _skip_without_fashion_mnist()
  out, _ = _execute("lit_locked_tower", tmp_path, monkeypatch)
  print(out["final"], out["tower_top1"])
  final = out["final"]
  assert set(final) == set(out["curves"]) == {"locked (Lu)", "unlocked (Uu)", "from scratch"}
  assert all(len(v) == 3 for v in final.values())
  # The tower learned its labels (measured 0.787 top-1 on 10,000 test photos).
  assert out["tower_top1"] > 0.7
  # LiT's direction, which held on each of the 3 seeds when measured: locked > unlocked >
  # from scratch (0.794/0.792/0.789 > 0.774/0.786/0.772 > 0.699/0.682/0.721).
  for seed in range(3):
    assert (final["locked (Lu)"][seed] > final["unlocked (Uu)"][seed]
            > final["from scratch"][seed]), (seed, final)


@pytest.mark.colab  # Not in CI (time): pytest -m colab.
def test_mae_mask_ratio_notebook(tmp_path, monkeypatch):
  _skip_without_fashion_mnist()
  results, nb = _execute("mae_mask_ratio", tmp_path, monkeypatch)
  print(results)
  assert results["seeds"] == [0, 1, 2]
  for probe in ("linear", "knn"):
    assert sorted(float(r) for r in results[probe]) == [0.25, 0.5, 0.75], results
    assert all(len(v) == 3 and all(0.0 <= x <= 1.0 for x in v)
               for v in results[probe].values()), results
    assert len(results["random_init"][probe]) == 3
  # MAE learns: at every ratio the linear probe, mean of 3 seeds, is above the random-init
  # encoder's (0.621 when measured) by at least 2 points (measured: 4.7 to 5.9).
  init = sum(results["random_init"]["linear"]) / 3
  for ratio, accs in results["linear"].items():
    assert sum(accs) / 3 > init + 0.02, (ratio, accs, init)
  # The paper's direction (a peak at 0.75 over lower ratios) did not hold over 3 seeds in
  # TINY mode when measured (nor at 1500 steps), so it is not asserted; the notebook prints
  # the numbers and says so (colabs/README.md).
  assert "best ratio per seed" in _printed(nb)


@pytest.mark.slow
def test_zeroshot_retrieval_converted_notebook(tmp_path, monkeypatch):
  results, _ = _execute("zeroshot_retrieval_converted", tmp_path, monkeypatch)
  print(results)
  # A 300-step SigLIP run, converted and loaded back, classifies and retrieves far above
  # chance (0.1 for both).
  assert results["zeroshot_top1"] > 0.5 and results["i2t_r@1"] > 0.3 and results["t2i_r@1"] > 0.3
