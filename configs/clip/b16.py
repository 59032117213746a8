"""CLIP ViT-B/16 on LAION-2B: open_clip's `laion2b_s34b_b88k` run (Cherti et al. 2023,
"Reproducible scaling laws for contrastive language-image learning"; its
Model-B-16_Data-2B_Samples-34B_lr-1e-3_bs-88k).

Reproduces: ImageNet-1k zero-shot top-1 70.2% (open_clip docs/openclip_results.csv, row
ViT-B-16 laion2b_s34b_b88k: 0.7023).
Trained by Mehdi Cherti on JUWELS Booster (model card laion/CLIP-ViT-B-16-laion2B-s34B-b88K).
The run (scaling-laws-openclip trained_models_info.csv, the row of this model, data, samples
and batch): 344 GPUs x 256 = batch 88,064,
171 epochs of 200,092,953 samples = 34.2B examples seen (388,534 steps), AdamW lr 1e-3 after
10,000 warmup steps, cosine; open_clip's defaults otherwise (clip_common.py).

    python -m bigvl.train --config configs/clip/b16.py:data_dir=gs://bucket/laion2b_en \
        --workdir gs://bucket/clip_b16_laion2b --distributed
    python -m bigvl.plan --config configs/clip/b16.py --topology a100x256

Data: as configs/clip/b32.py. Arg language and the deviations from open_clip: clip_common.py.
"""

import clip_common


def get_config(arg=None):
  return clip_common.get_config("B/16", arg)
