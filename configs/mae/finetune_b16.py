"""MAE end-to-end fine-tuning on ImageNet-1k: ViT-B/16 (ViT-L/16 with `L`) from an MAE
pretraining run (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

Reproduces: top-1 83.6% (ViT-B/16) and 85.9% (ViT-L/16) on ImageNet-1k val after 1600 epochs
of pretraining (paper Table 3; the release's FINETUNE.md: 83.664 / 85.952 for its checkpoints,
and four seeds of its recipe gave B 83.46-83.66, L 85.76-85.95).
Setting (FINETUNE.md, for the released norm-pix checkpoints): batch 1024, AdamW (0.9, 0.999),
lr = blr x batch / 256 with blr 5e-4 (B) / 1e-3 (L), wd 0.05, 5 warmup epochs, cosine,
100 epochs (B, 125,113 steps) / 50 epochs (L, 62,556 steps), label smoothing 0.1, the mean
of the encoder's tokens then a new LayerNorm ("fc_norm") then the linear head. Hardware
(FINETUNE.md, PyTorch): 32 V100s, ~7 h (B) / ~9 h (L).

    python -m bigvl.train --config configs/mae/finetune_b16.py:init=gs://bucket/mae_b16,data_dir=gs://bucket/tfds \
        --workdir gs://bucket/mae_b16_ft --distributed
    python -m bigvl.train --config configs/mae/finetune_b16.py:L,init=gs://bucket/mae_l16,data_dir=gs://bucket/tfds \
        --workdir gs://bucket/mae_l16_ft --distributed
    python -m bigvl.plan --config configs/mae/finetune_b16.py --topology v4-32

`init=` (required to train) is the workdir of configs/mae/b16.py (or l16.py): its `enc`
params initialise the classifier (init_subtree="enc"); the head and fc_norm start new.
Data: TFDS imagenet2012 with labels (`data_dir=` its TFDS data_dir), or `data=shards`.
Arg language: mae_common.py. No evaluator runs: bigvl has no supervised-accuracy evaluator
(`train/accuracy` is logged on training batches).

Deviation from the paper (bigvl lacks these; the numbers above assume them): layer-wise lr
decay (0.65 B / 0.75 L), drop path (0.1 B / 0.2 L), RandAugment (rand-m9-mstd0.5-inc1),
mixup 0.8, cutmix 1.0, random erasing 0.25; bicubic crops (bilinear here); the position
embeddings stay fixed sin-cos (MAE's timm ViT fine-tunes them from sin-cos) and there is no
class token in the sequence (MAE's has one, unpooled).
"""

import mae_common


def get_config(arg=None):
  return mae_common.get_finetune_config(arg)
