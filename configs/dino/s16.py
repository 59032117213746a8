"""DINO ViT-S/16 (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers").

Reproduces: ImageNet-1k linear evaluation 77.0% top-1 and 20-NN 74.5% of the teacher's
class-token features (paper Table 2, ViT-S/16 "DINO" row; the released ViT-S/16 checkpoint in
github.com/facebookresearch/dino's README table, 800 epochs).
Paper hardware and steps: batch 1024 over 16 GPUs (two 8-GPU machines); the README's
300-epoch ViT-S/16 run took 2.6 days on 16 GPUs (73.3% k-NN, 76.0% linear). 800 epochs of
1251 steps at batch 1024 = 1,000,800 steps.

    python -m bigvl.train --config configs/dino/s16.py:data_dir=gs://bucket/tfds \
        --workdir gs://bucket/dino_s16 --distributed
    python -m bigvl.plan --config configs/dino/s16.py --topology v5e-64

Data: TFDS imagenet2012 (ArrayRecord) under `data_dir=` or TFDS's default directory; or bigvl
shards of ImageNet (`data=shards,data_dir=...`, tools/make_dataset.py). `eval_dir=` adds a
k-NN proxy eval on imagenet2012 (dino_common.knn_eval). Arg language and the deviations
common to DINO: dino_common.py.

Setting values: lr 5e-4 x batch / 256 with min lr 1e-6 and global-norm clip 3.0 (main_dino.py
defaults); teacher temperature 0.04 -> 0.07 over 30 epochs (the paper, and the README's
"boosting" recipe for ViT-S/16); multi-crop 2 x 224 (25-100%) + 10 x 96 (5-25%) (the released
ViT-S/16's args).
Deviation from the paper: the README's ViT-S recipe trains with an unnormalised last head
layer (--norm_last_layer false); bigvl's DINO head always weight-normalises it.
"""

import dino_common


def get_config(arg=None):
  return dino_common.get_config("S/16", arg)
