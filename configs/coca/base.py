"""CoCa-Base (Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models",
arXiv 2205.01917).

Reproduces: the CoCa-Base model of the paper's Table 1: a 12-layer image encoder of width 768
(MLP 3072, 12 heads; 86M parameters) and a text decoder of 12 unimodal + 12 multimodal layers
(297M), 383M parameters in all; trained with 1 x contrastive + 2 x captioning loss. The
paper's headline accuracies (86.3% zero-shot ImageNet, 91.0% fine-tuned) are for the 2.1B
CoCa, not this size; this header quotes no CoCa-Base accuracy.
Paper pretraining (§4.1): JFT-3B (label names as text) + ALIGN alt-texts, batch 65,536,
500k steps (about 5 epochs of JFT, 10 of ALIGN), 288x288 images in 18x18 patches, then one
epoch at 576x576; "about 5 days on 2,048 CloudTPUv4 chips" is for the largest (2.1B) CoCa.
Optimizer: Adafactor (b1 0.9, b2 0.999), decoupled weight decay 0.01, lr warmed up to 8e-4
over the first 2% of steps, then decayed linearly. Sentencepiece vocabulary of 64k.
(Source: the paper, §3-4.1 and Table 1. Batch, steps, hardware, loss weights, the 64k
vocabulary, the 256/1-query poolers and the 576px last epoch were cross-checked against a
public summary of the paper; the optimizer numbers and 288px/18 were not, as no stored copy
of §4.1 was at hand. Table 1's 86M and 297M equal this config's towers, 86.0M and 296.9M,
which tests/test_configs_captioning.py checks.)

    python -m bigvl.train --config configs/coca/base.py:data_dir=gs://b/pairs,eval_dir=gs://b/tfds \\
        --workdir gs://b/coca_base --distributed
    python -m bigvl.plan --config configs/coca/base.py --topology v4-512

(The planner, 2026-12-06: fits, 19.0 GiB of 32 per device; 3.45 days at 40% MFU.)

Data: bigvl shards of image-text pairs (tools/make_dataset.py from img2dataset output;
`data_dir=` required), a 64k-piece sentencepiece model (`tokenizer=`; "" trains one on the
captions), and, for the evals, TFDS imagenet2012 and coco_captions under `eval_dir=`
(ImageNet zero-shot with CLIP's 80 prompts, COCO Karpathy-test retrieval, and greedy COCO
captions scored by BLEU-4/CIDEr). Arg language: coca_common.py.

Deviations from the paper:
- Optimizer: AdamW (b1 0.9, b2 0.999, weight decay 0.01 scaled by the lr schedule, as optax
  applies it) instead of the paper's Adafactor with momentum; bigvl's `adafactor` is optax's
  factored Adafactor without momentum.
- Poolers: the contrastive image embedding is a 1-query attention pooler with bigvl's MAP
  head (attention + LayerNorm + MLP) and a linear projection; the paper's captioning pooler
  (256 learned queries) is replaced by a linear projection of all 256 image tokens.
- Text length 64 and contrastive embedding width 768 are this config's choices (the paper
  states neither); so is the plain resize of the training images.
- No 576px last epoch (run it as a second config with res=576 and a short schedule).
- The text decoder is rematerialised but not scanned (bigvl's TextDecoder has no scan).
"""

import coca_common


def get_config(arg=None):
  return coca_common.get_config("Base", arg)
