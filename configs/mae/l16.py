"""MAE ViT-L/16 pretraining on ImageNet-1k (He et al. 2022, "Masked Autoencoders Are
Scalable Vision Learners", CVPR 2022, arXiv 2111.06377).

Reproduces: ViT-L/16 fine-tuned top-1 85.9% on ImageNet-1k (paper Table 3, pretrained 1600
epochs with norm-pix targets; the release's FINETUNE.md: 85.952 for its checkpoint; 85.4% at
800 epochs in the paper's Table 1d, per PRETRAIN.md). Linear probe of the same encoder: 75.8%
(paper, TF/TPU, as quoted in FINETUNE.md). Those numbers need this run, then
configs/mae/finetune_b16.py:L or linprobe_b16.py:L.
Paper setting: as b16.py (mask 75%, decoder 8 x 512, norm-pix loss, AdamW b2 0.95, base lr
1.5e-4 x batch / 256, wd 0.05, 40 warmup epochs, cosine, batch 4096); 1600 epochs = 500,455
steps (`epochs=800`: 250,227). Hardware: TensorFlow on TPUs in the paper; ~42 h on 64 V100s
for 800 epochs with the PyTorch release (PRETRAIN.md).

    python -m bigvl.train --config configs/mae/l16.py:data_dir=gs://bucket/tfds \
        --workdir gs://bucket/mae_l16 --distributed
    python -m bigvl.plan --config configs/mae/l16.py --topology v4-128

Data: TFDS imagenet2012 (`data_dir=` its TFDS data_dir), or `data=shards,data_dir=...`.
Arg language: mae_common.py.

Deviation from the paper: as b16.py (big_vision's sin-cos layout, no class token in the
encoder, no weight decay on the mask token, bilinear crops).
"""

import mae_common


def get_config(arg=None):
  return mae_common.get_pretrain_config("L/16", arg)
