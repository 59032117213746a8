"""SigLIP L/16 (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training").

Reproduces: the released SigLIP L/16 checkpoints' ImageNet-1k zero-shot top-1, 80.5% at 256px
and 82.1% at 384px (the released checkpoints' table in big_vision's SigLIP colab). Paper
hardware: TPU v4; batch 32k, WebLI English pairs, 64-token texts; steps from `samples=` as in
b16.py.

    python -m bigvl.train --config configs/siglip/l16.py:res=384,data_dir=gs://bucket/webli \
        --workdir gs://bucket/siglip_l16_384 --distributed
    python -m bigvl.plan --config configs/siglip/l16.py --topology v4-256

Data: as configs/siglip/b16.py. Arg language: siglip_common.py (default res=256).
"""

import siglip_common


def get_config(arg=None):
  return siglip_common.get_config("L/16", arg, res=256)
