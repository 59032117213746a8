"""tools/bench_kernels.py runs end to end on the CPU (--quick) and writes JSON + Markdown."""

import json

import pytest

from conftest import load_tool

pytestmark = pytest.mark.integration


def _load_tool():
  return load_tool("bench_kernels")


def test_quick_run_writes_json_and_markdown(tmp_path):
  tool = _load_tool()
  # --quick, narrowed further to one sequence length to keep the test short.
  assert tool.main(["--quick", "--seqs", "33", "--causal", "true", "--out", str(tmp_path)]) == 0
  with open(tmp_path / "bench_kernels.json") as f:
    result = json.load(f)
  md = (tmp_path / "bench_kernels.md").read_text()

  assert result["meta"]["quick"] and result["meta"]["backend"] == "cpu"
  attn = {(r["impl"], r["mode"]): r for r in result["attention"]}
  for impl in ("xla", "pallas"):
    for mode in ("fwd", "fwd+bwd"):
      r = attn[(impl, mode)]
      assert r["seq"] == 33 and r["causal"] and r["median_ms"] > 0 and r["tflops"] > 0
  assert attn[("pallas", "fwd")]["max_abs_err_vs_xla"] < 1e-5
  assert attn[("pallas", "fwd+bwd")]["speedup_vs_xla"] > 0
  assert "error" in attn[("cudnn", "fwd")]  # No cuDNN on a CPU: recorded, not fatal.

  loss = {(r["kind"], r["impl"], r["mode"]): r for r in result["loss"]}
  for kind in ("sigmoid", "softmax"):
    fused = loss[(kind, "pallas", "fwd")]
    assert fused["rel_err_vs_xla"] < 1e-5 and fused["slowdown_vs_matmul"] > 0
    assert fused["temp_bytes"] >= 0 and loss[(kind, "xla", "fwd+bwd")]["median_ms"] > 0

  # Targets are GPU-only: listed, but n/a here.
  assert len(result["targets"]) == 6 and {c["status"] for c in result["targets"]} == {"n/a"}
  for heading in ("## Targets", "## Attention", "## Contrastive loss"):
    assert heading in md
  assert "| float32 | 1 | 2 | 33 | 16 | yes | fwd+bwd | pallas |" in md
