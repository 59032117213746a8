"""Reading metrics.jsonl back: a last line torn mid-write (a crash, a full disk) is left out;
damage anywhere else is an error naming the line."""

import pytest

from bigvl import metrics

pytestmark = pytest.mark.unit


def test_a_torn_last_line_is_left_out(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "train/loss": 2.5}\n{"step": 2, "train/loss": 2.4}\n{"step": 3, "tr')
  assert [r["step"] for r in metrics.read_jsonl(str(path))] == [1, 2]


def test_a_bad_line_before_the_end_is_an_error(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2, "tr\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r"line 2 is not JSON.*damaged"):
    metrics.read_jsonl(str(path))


def test_a_bad_last_line_that_ends_with_a_newline_is_an_error(tmp_path):
  # A complete line that is not JSON was written whole: damage, not a torn write.
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match="line 2"):
    metrics.read_jsonl(str(path))
