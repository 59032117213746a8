"""DINO ViT-B/16 (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers").

Reproduces: ImageNet-1k linear evaluation 78.2% top-1 and 20-NN 76.1% of the teacher's
class-token features (paper Table 2, ViT-B/16 "DINO" row; the released ViT-B/16 checkpoint in
github.com/facebookresearch/dino's README table).
Paper hardware and steps: the released run's args: 400 epochs, batch 32 per GPU (1024 in
all, the paper's batch), fp32 (use_fp16 false); 400 epochs of 1251 steps = 500,400 steps.

    python -m bigvl.train --config configs/dino/b16.py:data_dir=gs://bucket/tfds \
        --workdir gs://bucket/dino_b16 --distributed
    python -m bigvl.plan --config configs/dino/b16.py --topology v5e-64

Data: TFDS imagenet2012 (ArrayRecord) under `data_dir=` or TFDS's default directory; or bigvl
shards of ImageNet (`data=shards,data_dir=...`, tools/make_dataset.py). `eval_dir=` adds a
k-NN proxy eval on imagenet2012 (dino_common.knn_eval). Arg language and the deviations
common to DINO: dino_common.py.

Setting values, from the released ViT-B/16's args: lr 7.5e-4 x batch / 256, min lr 2e-6,
clip 0.3, teacher temperature 0.04 -> 0.07 over 50 epochs, teacher momentum 0.996, the last
head layer weight-normalised, multi-crop 2 x 224 (25-100%) + 10 x 96 (5-25%).
Deviation from the paper: bfloat16 compute (the release trained this model in fp32), and the
release freezes the head's last layer for 3 epochs (not in bigvl; see dino_common.py).
"""

import dino_common


def get_config(arg=None):
  return dino_common.get_config("B/16", arg)
