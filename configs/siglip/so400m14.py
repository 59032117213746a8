"""SigLIP So400m/14, the shape-optimised ViT (Zhai et al. 2023; Alabdulmohsin et al. 2023,
"Getting ViT in Shape").

Reproduces: the released So400m/14 checkpoints' ImageNet-1k zero-shot top-1, 82.2% at 224px and
83.1% at 384px (the released checkpoints' table in big_vision's SigLIP colab). Both towers are
So400m (878M parameters in all); batch 32k, WebLI English pairs, 64-token texts; steps from
`samples=` as in b16.py.

    python -m bigvl.train --config configs/siglip/so400m14.py:res=384,data_dir=gs://bucket/webli \
        --workdir gs://bucket/siglip_so400m14_384 --distributed
    python -m bigvl.plan --config configs/siglip/so400m14.py:res=384 --topology v5p-256

Data: as configs/siglip/b16.py. Arg language: siglip_common.py (default res=224; 384 is the
other released size).
"""

import siglip_common


def get_config(arg=None):
  return siglip_common.get_config("So400m/14", arg, res=224)
