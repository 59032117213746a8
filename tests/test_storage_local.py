"""Files that several processes of one run write to the same workdir path."""

import multiprocessing
import os

import pytest

from bigvl import storage
from bigvl.data import digits, tokenizer as tok_lib


def _save_many(args):
  path, proto, n = args
  tok = tok_lib.Tokenizer(proto)
  for _ in range(n):
    tok.save(path)
  return True


@pytest.mark.integration
def test_processes_saving_the_same_tokenizer_at_once_all_succeed(tmp_path):
  # What every process of a multi-host run does on its first start with an empty
  # workdir. A shared temporary name fails here within a few hundred writes.
  tok = tok_lib.train(digits.Digits("train").texts()[:500], 64)
  path = str(tmp_path / "tokenizer.model")
  with multiprocessing.get_context("spawn").Pool(4) as pool:
    assert all(pool.map(_save_many, [(path, tok.sp.serialized_model_proto(), 300)] * 4))
  assert tok_lib.Tokenizer.load(path).vocab_size == tok.vocab_size
  assert os.listdir(tmp_path) == ["tokenizer.model"]


@pytest.mark.unit
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "f.json")
  storage.write(path, "old")

  class Boom:  # Not str or bytes: the write itself raises, after the temp file is opened.
    pass

  with pytest.raises(TypeError):
    storage.write(path, Boom())
  assert open(path).read() == "old"
  assert os.listdir(tmp_path) == ["f.json"]
