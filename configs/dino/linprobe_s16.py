"""DINO linear evaluation on ImageNet-1k: a frozen DINO teacher backbone (ViT-S/16, or B/16
with `size=B`) and a linear classifier trained on its features (Caron et al. 2021, "Emerging
Properties in Self-Supervised Vision Transformers", Sec. 4.1 and eval_linear.py).

Reproduces: linear top-1 77.0% (S/16, 800 epochs of pretraining) and 78.2% (B/16, 400 epochs)
(paper Table 2; the release's README), with configs/dino/s16.py or b16.py as pretraining.
Setting (the release's eval_linear.py defaults): 100 epochs, batch 1024 (128 per GPU on 8
GPUs), SGD momentum 0.9, lr 0.001 x batch / 256, no weight decay, cosine to 0, random
resized crops of 224 and flips; the teacher's weights (`init=` a DINO workdir;
init_subtree "objective_state/teacher/student/backbone"), frozen.

    python -m bigvl.train --config configs/dino/linprobe_s16.py:init=gs://bucket/dino_s16,data_dir=gs://bucket/tfds \
        --workdir gs://bucket/dino_s16_linear --distributed
    python -m bigvl.plan --config configs/dino/linprobe_s16.py --topology v4-16

Data: TFDS imagenet2012 under `data_dir=` (or `data=shards`). Args: size=S|B, init=, epochs=,
batch=, blr=, data=, data_dir=, smoke.

Deviation from the paper (bigvl's ViT classifier reads one feature): the release feeds the
linear layer the class tokens of the last 4 blocks, concatenated (S), or the last class token
and the mean patch token (B); here the last block's final-normed class token alone (expect a
lower number, the paper's Table 2 protocol aside). The linear layer starts at zeros (the
release: normal, std 0.01). Crops are bilinear (the release: bilinear too for training).
"""

import dino_common


def get_config(arg=None):
  return dino_common.get_linprobe_config(arg)
