"""MAE ViT-B/16 pretraining on ImageNet-1k (He et al. 2022, "Masked Autoencoders Are
Scalable Vision Learners", CVPR 2022, arXiv 2111.06377).

Reproduces: ViT-B/16 fine-tuned top-1 83.6% on ImageNet-1k (paper Table 3, pretrained 1600
epochs with norm-pix targets; the release's FINETUNE.md: 83.664 for its checkpoint). The
linear probe of the same encoder: 68.0% (paper, TF/TPU, as quoted in FINETUNE.md). Those
numbers need this run, then configs/mae/finetune_b16.py or linprobe_b16.py.
Paper setting: mask 75% of 196 patches, decoder 8 blocks x 512 wide (16 heads), loss on the
masked patches' per-patch-normalised pixels; AdamW (b2 0.95), base lr 1.5e-4 x batch / 256
(2.4e-3 at 4096), wd 0.05, 40 warmup epochs, cosine; batch 4096; 1600 epochs = 500,455 steps
(800 epochs: `epochs=800`, 250,227 steps). Hardware: the paper trained in TensorFlow on TPUs
(the release's README); its PyTorch re-implementation takes ~42 h on 64 V100s for ViT-L
at 800 epochs (PRETRAIN.md).

    python -m bigvl.train --config configs/mae/b16.py:data_dir=gs://bucket/tfds \
        --workdir gs://bucket/mae_b16 --distributed
    python -m bigvl.plan --config configs/mae/b16.py --topology v4-128

Data: TFDS imagenet2012 (train split, prepared in ArrayRecord format; `data_dir=` its TFDS
data_dir), or `data=shards,data_dir=...` for bigvl shards of ImageNet (tools/make_dataset.py).
Arg language: mae_common.py.

Deviation from the paper: the fixed sin-cos position embeddings are big_vision's layout
(bigvl's `sincos2d`), not MAE's frequency layout; the encoder has no class token (MAE's
encoder carries one, which its fine-tuning with global pooling does not read); the mask token
gets no weight decay (bigvl decays `*/kernel` only); random resized crops are bilinear, not
bicubic.
"""

import mae_common


def get_config(arg=None):
  return mae_common.get_pretrain_config("B/16", arg)
