"""CLIP ViT-B/32 on LAION-2B: open_clip's `laion2b_s34b_b79k` run (Cherti et al. 2023,
"Reproducible scaling laws for contrastive language-image learning"; its
Model-B-32_Data-2B_Samples-34B_lr-1e-3_bs-79k).

Reproduces: ImageNet-1k zero-shot top-1 66.6% (open_clip docs/openclip_results.csv, row
ViT-B-32 laion2b_s34b_b79k: 0.6656; the same 66.6% in docs/PRETRAINED.md and the model card
laion/CLIP-ViT-B-32-laion2B-s34B-b79K).
Trained by Romain Beaumont on the stability.ai cluster (model card).
The run (scaling-laws-openclip trained_models_info.csv, the row of this model, data, samples
and batch): 824 GPUs x 96 = batch 79,104,
256 epochs of 135,646,078 samples = 34.7B examples seen (438,984 steps), AdamW lr 1e-3 after
2,000 warmup steps, cosine; open_clip's defaults otherwise (clip_common.py).

    python -m bigvl.train --config configs/clip/b32.py:data_dir=gs://bucket/laion2b_en \
        --workdir gs://bucket/clip_b32_laion2b --distributed
    python -m bigvl.plan --config configs/clip/b32.py --topology a100x256

Data: bigvl shards of LAION-2B-en image-text pairs (img2dataset's output through
tools/make_dataset.py; `data_dir=` required), optionally a sentencepiece model (`tokenizer=`),
and for the evals TFDS imagenet2012 and coco_captions under `eval_dir=`. Arg language and the
deviations from open_clip: clip_common.py.
"""

import clip_common


def get_config(arg=None):
  return clip_common.get_config("B/32", arg)
