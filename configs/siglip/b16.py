"""SigLIP B/16 (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training").

Reproduces: the released SigLIP B/16 checkpoints' ImageNet-1k zero-shot top-1, 76.2% at 224px
and 76.7% at 256px (the released checkpoints' table in big_vision's SigLIP colab).
Paper hardware: TPU v4 (the released models' cards: 16 chips, 3 days). Batch 32k, the sigmoid
loss, WebLI English pairs, 64-token texts. Steps: `samples=` examples seen / batch; the default
40e9 (1.22M steps at 32k) is the long schedule, so set `samples=` to the length you compare
against (`python -m bigvl.plan` prints the days it implies).

    python -m bigvl.train --config configs/siglip/b16.py:res=256,data_dir=gs://bucket/webli \
        --workdir gs://bucket/siglip_b16_256 --distributed
    python -m bigvl.plan --config configs/siglip/b16.py --topology v5e-256

Data: bigvl shards of image-text pairs (tools/make_dataset.py from img2dataset output;
`data_dir=` required), a sentencepiece model (`tokenizer=`, 32k pieces), and, for the evals,
TFDS imagenet2012 and coco_captions under `eval_dir=`. Arg language: siglip_common.py.
"""

import siglip_common


def get_config(arg=None):
  return siglip_common.get_config("B/16", arg, res=224)
