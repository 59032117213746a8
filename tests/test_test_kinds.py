"""tests/conftest.py refuses to collect a test that does not say whether it is a unit or an
integration test (or says both, or is a slow/demo test that calls itself unit)."""

import pytest

import conftest

pytestmark = pytest.mark.unit


class FakeItem:
  """What the check reads of a collected pytest item: its node id and its marks."""

  def __init__(self, *marks):
    self.nodeid = "tests/test_x.py::test_y"
    self.marks = [getattr(pytest.mark, m).mark for m in marks]

  def iter_markers(self, name=None):
    return (m for m in self.marks if name is None or m.name == name)


def test_a_test_has_exactly_one_kind():
  assert conftest.kind_of(FakeItem("unit")) == "unit"
  assert conftest.kind_of(FakeItem("integration", "slow")) == "integration"
  assert conftest.kind_of(FakeItem("demo", "integration")) == "integration"
  with pytest.raises(ValueError, match="test_x.py::test_y: no kind"):
    conftest.kind_of(FakeItem("slow"))
  with pytest.raises(ValueError, match="both unit and integration"):
    conftest.kind_of(FakeItem("unit", "integration"))
  with pytest.raises(ValueError, match="slow, scale, demo and colab tests are integration"):
    conftest.kind_of(FakeItem("unit", "slow"))


def test_collection_fails_naming_every_test_without_a_kind():
  items = [FakeItem("unit"), FakeItem()]
  items[1].nodeid = "tests/test_new.py::test_unmarked"
  with pytest.raises(pytest.UsageError, match="test_new.py::test_unmarked: no kind"):
    conftest.pytest_collection_modifyitems(None, items)
  conftest.pytest_collection_modifyitems(None, items[:1])  # All marked: nothing raised.
