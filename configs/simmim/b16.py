"""SimMIM ViT-B/16 pretraining on ImageNet-1k (Xie et al. 2022, "SimMIM: A Simple Framework
for Masked Image Modeling", CVPR 2022, arXiv 2111.09886).

Reproduces: ViT-B/16 fine-tuned top-1 83.8% on ImageNet-1k after 800 epochs of SimMIM
pretraining at 224px (the paper's abstract and ViT-B comparison; the release's README table
and its configs/vit_base__800ep/). The fine-tuning stage is not in this file.
Setting (the release's simmim_pretrain__vit_base__img224__800ep.yaml and config.py): 224px,
random masking of 60% of the image in 32x32 blocks, a one-layer linear prediction head, L1
loss on the masked pixels; AdamW (0.9, 0.999), base lr 1e-4 scaled by batch / 512 (as
main_simmim.py does), wd 0.05, 10 warmup epochs, multi-step decay (x0.1 at epoch 700), grad
clip 5.0, drop path 0.1, RandomResizedCrop(scale 0.67-1) + flip. The ViT-B batch is not in
that config (128 per GPU x the GPUs used): 2048 here, as the README's 16-GPU x 128
pretraining example (for Swin-B), so lr 4e-4; 800 epochs = 500,455 steps. (192px, and lr
8e-4 = 2e-4 x 2048 / 512, are the release's Swin-B pretraining configs, not its ViT-B one.)

    python -m bigvl.train --config configs/simmim/b16.py:data_dir=gs://bucket/tfds \
        --workdir gs://bucket/simmim_b16 --distributed
    python -m bigvl.plan --config configs/simmim/b16.py --topology v4-64

Data: TFDS imagenet2012 (train split, ArrayRecord; `data_dir=` its TFDS data_dir), or
`data=shards,data_dir=...` for bigvl shards of ImageNet (tools/make_dataset.py).

Arg language (all optional, comma-separated):
  epochs=800, batch=2048, blr=1e-4 (lr = blr x batch / 512), mask=0.6, res=224,
  data=tfds | shards, data_dir=..., smoke (a tiny SimMIM, 3 CPU steps on synthetic 32px).

Deviation from the paper (bigvl lacks these): the mask is drawn per 16x16 patch, not in
32x32 blocks; the release's ViT uses a shared relative position bias and layer scale (init
0.1) with no absolute position embedding (here: learned absolute position embeddings, no
layer scale); no drop path; cosine decay instead of the multi-step schedule; bilinear crops.
"""

from bigvl import recipes
from bigvl.config_lib import parse_arg
import ml_collections

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
  arg = parse_arg(arg, epochs=800, batch=2048, blr=1e-4, mask=0.6, res=224, data="tfds",
                  data_dir="", smoke=False)
  steps = lambda epochs: max(int(epochs * IMAGENET_TRAIN) // arg.batch, 1)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = arg.batch
  c.total_steps = steps(arg.epochs)
  c.log_every = 100
  c.eval_every = 0
  c.checkpoint_every = 5_000
  c.keep_every = 50_000
  pp = (f"inception_crop({arg.res}, scale=(0.67, 1.0))|flip_lr|normalize('imagenet')|"
        "keep('image')")
  c.data = dict(
      train=recipes.source(arg, tfds="imagenet2012", split="train", pp=pp),
      stand_in=recipes.stand_in(image_size=arg.res),
      workers=8,
  )
  c.model = dict(name="simmim", channels=3, dtype="bfloat16",
                 encoder=dict(variant="B/16", posemb="learn", remat="full",
                              scan_layers=True, attention_impl="auto"))
  c.objective = dict(name="simmim", mask_ratio=arg.mask)
  c.optimizer = dict(name="adamw", lr=arg.blr * arg.batch / 512, b1=0.9, b2=0.999,
                     weight_decay=0.05, warmup_steps=steps(10), schedule="cosine",
                     grad_clip=5.0)
  # 86M params: plain data parallel.
  c.sharding = dict(mesh=dict(data=-1, fsdp=1, tensor=1), rules="dp")
  c.evals = {}
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    recipes.smoke(c)
    c.model.encoder.update(variant="mu/8", remat="none", attention_impl="xla")
    c.model.dtype = "float32"
    c.data.stand_in.image_size = 32
    c.data.train.image_size = 32
    c.data.train.pp = pp.replace(f"({arg.res},", "(32,")
  return c
