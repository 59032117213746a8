"""The tokenizer of a run: the config's sentencepiece model, the one cached in the workdir, or
one trained on the captions of the training data's own sources.

The sources are built the way the loader builds them (`loader.source_configs`), so any train
data config the loader accepts, a mixture included, resolves its tokenizer here.
"""

from __future__ import annotations

from bigvl.data import loader, tokenizer as tok_lib


class TokenizerError(ValueError):
  """No tokenizer can be had for this config; the message says what to set."""


def needs_tokenizer(train_cfg, extra_needed: bool = False) -> bool:
  """Whether any pp of the train data config (a mixture's components' included) tokenizes,
  or the caller needs one anyway (`extra_needed`: e.g. a zero-shot evaluator)."""
  pps = [str(train_cfg.get("pp", ""))] + [str(c.get("pp", ""))
                                          for _, c in loader.source_configs(train_cfg)]
  return extra_needed or any("tokenize" in pp for pp in pps)


def train_texts(train_cfg) -> list[str]:
  """Every caption of the sources of `train_cfg` that have captions (`texts()`), in source
  order; raises TokenizerError when none of them has any."""
  texts, names = [], []
  for label, cfg in loader.source_configs(train_cfg):
    source = loader.build_source(cfg)
    names.append(label)
    if hasattr(source, "texts"):
      texts.extend(source.texts())
  if not texts:
    raise TokenizerError(
        f"config.data.tokenizer is empty and no training source ({', '.join(names)}) has "
        "captions to train one from: give a sentencepiece model path.")
  return texts


def resolve(data_cfg, workdir: str | None, *, extra_needed: bool = False,
            is_main: bool = True) -> tok_lib.Tokenizer | None:
  """The run's tokenizer, or None when nothing tokenizes.

  `data_cfg`: config.data (train, tokenizer, vocab_size, tokenizer_type, special_tokens,
  text_len). A tokenizer trained here is cached as `workdir/tokenizer.model`, so a resumed
  run and `python -m bigvl.eval` use the same one. On the main process, warns when captions
  do not fit `text_len` tokens (a cut caption can lose the word that names its class).
  """
  train_cfg = data_cfg.train
  if not needs_tokenizer(train_cfg, extra_needed):
    return None
  cache = {}

  def texts():
    if "texts" not in cache:
      cache["texts"] = train_texts(train_cfg)
    return cache["texts"]

  tok = tok_lib.get_or_train(data_cfg.tokenizer, workdir, texts, data_cfg.vocab_size,
                             data_cfg.tokenizer_type, tuple(data_cfg.special_tokens))
  if is_main:
    try:
      sample = texts()[:10_000]
    except TokenizerError:  # A given tokenizer and no captions: nothing to check.
      sample = []
    frac = tok_lib.truncated_fraction(tok, sample, data_cfg.text_len)
    if frac > 0:
      print(f"WARNING: {frac:.1%} of training captions are longer than config.data.text_len="
            f"{data_cfg.text_len} tokens ({tok.source}) and will be truncated.", flush=True)
  return tok
