"""CLIP ViT-L/14 on LAION-2B: open_clip's `laion2b_s32b_b82k` run (Cherti et al. 2023,
"Reproducible scaling laws for contrastive language-image learning"; model card
laion/CLIP-ViT-L-14-laion2B-s32B-b82K).

Reproduces: ImageNet-1k zero-shot top-1 75.3% (open_clip docs/openclip_results.csv, row
ViT-L-14 laion2b_s32b_b82k: 0.7525; 75.3% in docs/PRETRAINED.md and the model card).
The run: 384 A100 GPUs on JUWELS Booster (model card), 160 "virtual" epochs of 200M samples
= 32B examples seen, AdamW lr 1e-3 after 10,000 warmup steps, cosine (trained_models_info.csv).
Its batch was 79,872 (208 per GPU) for the first 68 epochs and 86,016 (224 per GPU) after a
restart in float32 (model card); this config uses 86,016 throughout: 372,023 steps.
Normalisation: mean = std = 0.5, as these weights (docs/PRETRAINED.md).

    python -m bigvl.train --config configs/clip/l14.py:data_dir=gs://bucket/laion2b_en \
        --workdir gs://bucket/clip_l14_laion2b --distributed
    python -m bigvl.plan --config configs/clip/l14.py --topology a100x256

Data: as configs/clip/b32.py. Arg language and the deviations from open_clip (also: one batch
size instead of the run's two): clip_common.py.
"""

import clip_common


def get_config(arg=None):
  return clip_common.get_config("L/14", arg)
