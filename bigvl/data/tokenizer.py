"""Sentencepiece tokenizer: load one, or train one from captions and cache it."""

from __future__ import annotations

import io
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from bigvl import storage


class Tokenizer:
  """Wraps a sentencepiece model. Texts -> (n, length) int32 ids: pieces, EOS, then pad."""

  def __init__(self, model_proto: bytes, source: str = "<memory>"):
    self.source = source
    self._proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self.sp.get_piece_size()
    self.eos_id = self.sp.eos_id()
    self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else 0
    if self.eos_id < 0:
      raise ValueError(f"Tokenizer {source} has no EOS piece; bigvl needs one to end texts.")

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    if not storage.exists(path):
      raise FileNotFoundError(f"Tokenizer model not found: {path!r}. Set config.data.tokenizer "
                              "to a sentencepiece .model file (a path or a gs:// / s3:// URL), "
                              "or to '' to train one.")
    return cls(storage.read_bytes(path), source=path)

  def encode(self, texts: Sequence[str] | str, length: int) -> np.ndarray:
    """Ids padded with pad_id; a text longer than `length` is cut and still ends in EOS."""
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    out = np.full((len(texts), length), self.pad_id, np.int32)
    for i, ids in enumerate(self.sp.encode(texts)):
      ids = list(ids)[:length - 1] + [self.eos_id]
      out[i, :len(ids)] = ids
    return out[0] if single else out

  def piece_id(self, piece: str) -> int:
    """The id of a piece that must be in the vocabulary (e.g. "<image>")."""
    i = self.sp.piece_to_id(piece)
    if self.sp.id_to_piece(i) != piece:
      raise ValueError(f"Tokenizer {self.source} has no piece {piece!r}; train it with "
                       f"config.data.special_tokens=({piece!r}, ...) or use one that has it.")
    return i

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.sp.decode([i for i in ids if i != self.pad_id])

  def save(self, path: str) -> None:
    storage.write(path, self._proto)  # Every process of a run may save the same path.


def train(texts: Iterable[str], vocab_size: int, model_type: str = "bpe",
          special_tokens: Sequence[str] = ()) -> Tokenizer:
  """Trains a sentencepiece model on `texts`; ids: pad 0, unk 1, eos 2, no bos, then
  `special_tokens` (e.g. Flamingo's "<image>", "<|endofchunk|>"), each always one piece.

  Single-threaded so the same texts always give the same model.
  """
  buf = io.BytesIO()
  extra = dict(user_defined_symbols=list(special_tokens)) if special_tokens else {}
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size,
      model_type=model_type, pad_id=0, unk_id=1, eos_id=2, bos_id=-1,
      hard_vocab_limit=False, character_coverage=1.0, num_threads=1,
      minloglevel=2, **extra)
  return Tokenizer(buf.getvalue(), source=f"<trained {model_type} vocab={vocab_size}>")


def get_or_train(path: str, workdir: str | None, texts_fn, vocab_size: int,
                 model_type: str = "bpe", special_tokens: Sequence[str] = ()) -> Tokenizer:
  """`path` if given; else the cached `workdir/tokenizer.model`; else train on `texts_fn()` and cache."""
  if path:
    return Tokenizer.load(path)
  cached = storage.join(workdir, "tokenizer.model") if workdir else None
  if cached and storage.exists(cached):
    return Tokenizer.load(cached)
  tok = train(texts_fn(), vocab_size, model_type, special_tokens)
  if cached:
    storage.makedirs(workdir)
    tok.save(cached)
    tok.source = cached
  return tok


def truncated_fraction(tok: Tokenizer, texts: Sequence[str], length: int) -> float:
  """Fraction of `texts` that do not fit in `length` tokens with their EOS."""
  texts = list(texts)
  if not texts:
    return 0.0
  return sum(len(ids) + 1 > length for ids in tok.sp.encode(texts)) / len(texts)


def train_to_file(texts: Sequence[str], path: str, vocab_size: int, model_type: str = "bpe",
                  text_len: int = 16) -> dict:
  """Trains on `texts`, saves the model at `path`, and returns what a user checks.

  The result has `vocab_size` (as trained, which may be below the one asked for on few
  texts), `num_texts` and `truncated_fraction` (texts that do not fit `text_len` tokens).
  """
  texts = list(texts)
  tok = train(texts, vocab_size, model_type)
  storage.makedirs(storage.dirname(storage.abspath(path)))
  tok.save(path)
  return {"path": path, "vocab_size": tok.vocab_size, "num_texts": len(texts),
          "truncated_fraction": truncated_fraction(tok, texts, text_len)}
