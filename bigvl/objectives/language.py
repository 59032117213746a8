"""Language modelling: the next-token loss of a causal LM on plain token sequences.

`next_token_loss` is shared with the objectives of models built on a `CausalLM` (Flamingo's
interleaved objective uses it with the image marker among `ignore_ids`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bigvl.decoding import token_mask
from bigvl.objectives.checks import check_label_smoothing
from bigvl.registry import OBJECTIVES

EOS_ID = 2  # bigvl's tokenizers: pad 0, unk 1, eos 2.
PAD_ID = 0


def target_weights(tokens, *, eos_id: int = EOS_ID, pad_id: int = PAD_ID, ignore_ids=()):
  """(b, l) ids -> (b, l - 1) float32 weights of the targets `tokens[:, 1:]`.

  A target counts (1.0) if it is not `pad_id`, not in `ignore_ids`, and at or before the
  first EOS among the targets (the EOS itself counts). `tokens[:, 0]` is context only: it
  is never predicted, so a leading BOS equal to EOS (GPT-2's <|endoftext|>) ends nothing.
  """
  targets = tokens[:, 1:]
  w = token_mask(targets, eos_id) * (targets != pad_id)
  for i in ignore_ids:
    w = w * (targets != i)
  return w.astype(jnp.float32)


def next_token_loss(logits, tokens, *, eos_id: int = EOS_ID, pad_id: int = PAD_ID,
                    ignore_ids=(), label_smoothing: float = 0.0):
  """Mean next-token cross-entropy and accuracy of a causal LM run on `tokens`.

  Args:
    logits: (b, l, vocab): the LM's output on `tokens`; position i predicts tokens[:, i + 1]
      (the last position predicts nothing and is dropped).
    tokens: (b, l) int ids, the LM's input.
    eos_id, pad_id, ignore_ids: which targets count (see `target_weights`).
    label_smoothing: mass spread uniformly over the vocabulary, as `optax.smooth_labels`.
  Returns:
    (loss, accuracy): float32 scalars, means over the counted targets (0 when none count).
  """
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  targets = tokens[:, 1:]
  w = target_weights(tokens, eos_id=eos_id, pad_id=pad_id, ignore_ids=ignore_ids)
  nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if label_smoothing:
    # CE against (1 - a) * one_hot + a / V, without materialising the (b, l, V) labels.
    nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)
  n = jnp.maximum(w.sum(), 1.0)
  acc = ((jnp.argmax(logp, axis=-1) == targets) * w).sum() / n
  return (nll * w).sum() / n, acc


@OBJECTIVES.register("lm")
@dataclasses.dataclass(frozen=True)
class LanguageModeling:
  """Next-token prediction with a decoder-only LM (model `lm`). Batch: `text` (b, l) ids.

  Options: `label_smoothing`; `ignore_tokens`, ids that are never targets (e.g. a separator
  the model should only read); `eos_id` / `pad_id` of the tokenizer (bigvl's: 2 / 0; a
  GPT-2 vocabulary ends documents with 50256).
  Metrics: token_accuracy, perplexity (exp of the cross-entropy without label smoothing, so
  exp(loss) when there is none).
  """
  label_smoothing: float = 0.0
  ignore_tokens: tuple = ()
  eos_id: int = EOS_ID
  pad_id: int = PAD_ID

  def __post_init__(self):
    check_label_smoothing(self.label_smoothing)
    # Configs give lists; a tuple keeps the objective hashable.
    object.__setattr__(self, "ignore_tokens", tuple(int(i) for i in self.ignore_tokens))

  def loss(self, model, params, batch, rng, *, train: bool = True):
    if "text" not in batch:
      raise ValueError(f"The lm objective needs batch key 'text' (b, l) ids; got {sorted(batch)}.")
    text = batch["text"]
    logits = model.apply({"params": params}, text, train=train, rngs={"dropout": rng})
    opts = dict(eos_id=self.eos_id, pad_id=self.pad_id, ignore_ids=self.ignore_tokens)
    loss, acc = next_token_loss(logits, text, label_smoothing=self.label_smoothing, **opts)
    nll = next_token_loss(logits, text, **opts)[0] if self.label_smoothing else loss
    return loss, {"token_accuracy": acc, "perplexity": jnp.exp(nll)}
