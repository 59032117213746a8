"""MAE linear probe on ImageNet-1k: a frozen ViT-B/16 (ViT-L/16 with `L`) from an MAE
pretraining run, a linear head trained on it (He et al. 2022, "Masked Autoencoders Are
Scalable Vision Learners").

Reproduces: top-1 68.0% (ViT-B/16) and 75.8% (ViT-L/16) on ImageNet-1k val, the paper's
TF/TPU linear-probe numbers as quoted in the release's FINETUNE.md (its PyTorch re-run: 67.8
/ 76.0).
Setting (paper appendix; FINETUNE.md, main_linprobe.py): batch 16384, LARS with momentum 0.9,
lr = 0.1 x batch / 256 (6.4), no weight decay, 10 warmup epochs, cosine, 90 epochs (7,037
steps; FINETUNE.md: 50 suffice for L/H), BatchNorm without affine before the head, the class
token's feature (--cls_token). Hardware (FINETUNE.md): 32 V100s, ~2 h 20 min for 90 epochs.

    python -m bigvl.train --config configs/mae/linprobe_b16.py:init=gs://bucket/mae_b16,data_dir=gs://bucket/tfds \
        --workdir gs://bucket/mae_b16_lin --distributed
    python -m bigvl.plan --config configs/mae/linprobe_b16.py --topology v4-32

`init=` (required to train) is the workdir of configs/mae/b16.py (or l16.py with `L`); its
`enc` params are loaded (init_subtree="enc") and frozen (optimizer.frozen_pattern: all but
`head/`). Data: TFDS imagenet2012 with labels, or `data=shards`. Arg language: mae_common.py.

Deviation from the paper (bigvl lacks these): LARS. Here plain SGD, momentum 0.9, with the
base lr of DINO's linear evaluation (eval_linear.py: SGD, lr 0.001 x batch / 256, no BatchNorm
either): 0.064 at batch 16384. LARS's nominal 0.1 x batch / 256 (`blr=0.1`, 6.4) without its
per-layer trust ratio is a 100x larger step: with the 3-step smoke encoder the loss rose from
6.9 to 21 in three steps. Neither lr was measured at ImageNet scale here; the
BatchNorm (affine=False) on the features before the head; the class token (the encoder has
none: the feature is the mean of its final-normed tokens); the head's init (MAE: truncated
normal, std 0.01; here zeros); bicubic crops (bilinear here).
"""

import mae_common


def get_config(arg=None):
  return mae_common.get_linprobe_config(arg)
