"""Flamingo: next-token prediction on interleaved image-text sequences.

Batch: `images` (b, m, h, w, c) and `text` (b, l) ids holding one `<image>` marker per
image (bigvl/data/interleaved.py). The loss is the LM's next-token cross-entropy over the
text tokens: image markers and padding are never targets; `<|endofchunk|>` and EOS are.
By default only the bridges train -- the vision tower and the LM are frozen
(`freeze`, a regex over "/"-joined param paths; their params get no optimizer state).
"""

from __future__ import annotations

import dataclasses

from bigvl.objectives.checks import check_label_smoothing
from bigvl.registry import OBJECTIVES
from bigvl.objectives.language import next_token_loss


@OBJECTIVES.register("flamingo")
@dataclasses.dataclass(frozen=True)
class FlamingoObjective:
  freeze: str = "vision/.*|lm/.*"     # "" trains everything.
  label_smoothing: float = 0.0

  def __post_init__(self):
    check_label_smoothing(self.label_smoothing)

  @property
  def frozen_params(self) -> str:
    return self.freeze

  def loss(self, model, params, batch, rng, *, train: bool = True):
    if "images" not in batch or "text" not in batch:
      raise ValueError(f"The flamingo objective needs batch keys 'images' and 'text'; got "
                       f"{sorted(batch)}. End the pp with keep('images', 'text').")
    logits = model.apply({"params": params}, batch["images"], batch["text"], train=train,
                         rngs={"dropout": rng})
    loss, acc = next_token_loss(logits, batch["text"], ignore_ids=(model.image_token_id,),
                                label_smoothing=self.label_smoothing)
    return loss, {"token_accuracy": acc}
