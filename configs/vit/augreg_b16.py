"""Supervised ViT-B/16, ImageNet-21k pretraining then ImageNet-1k fine-tuning (Steiner et al.
2022, "How to train your ViT? Data, Augmentation, and Regularization in Vision Transformers").

Reproduces: 85.49% ImageNet-1k top-1 at 384px of the recommended AugReg B/16 checkpoint,
B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0, fine-tuned with
--imagenet2012-steps_20k-lr_0.03-res_384 (the table of recommended checkpoints in
github.com/google-research/vision_transformer's README, which picks them from the i21k_300
column of the paper's Table 3). The names spell the setting: i21k pretraining for
300 epochs, Adam lr 1e-3, "medium1" augmentation (RandAugment(2, 15) + mixup p=0.2, per
big_vision's configs/vit_i21k.py), weight decay 0.1, no dropout, no stochastic depth; then
20k SGD steps at lr 0.03 at 384px.
Paper hardware: Cloud TPUs (the paper's compute tables; not restated here); batch 4096 for
pretraining, 512 for fine-tuning.

Stage 1, ImageNet-21k (300 epochs of ~14.15M images at batch 4096 = 1,036,078 steps):

    python -m bigvl.train --config configs/vit/augreg_b16.py:stage=i21k,data_dir=gs://bucket/i21k \
        --workdir gs://bucket/augreg_b16_i21k --distributed
    python -m bigvl.plan --config configs/vit/augreg_b16.py:stage=i21k --topology v4-128

Stage 2, ImageNet-1k at 384px from stage 1 (20,000 steps of batch 512):

    python -m bigvl.train \
        --config configs/vit/augreg_b16.py:stage=i1k,init=gs://bucket/augreg_b16_i21k,data_dir=gs://bucket/tfds \
        --workdir gs://bucket/augreg_b16_i1k --distributed
    python -m bigvl.plan --config configs/vit/augreg_b16.py:stage=i1k --topology v4-32

Data: stage i21k: bigvl shards of ImageNet-21k with integer labels 0..21842 (tools/make_dataset.py;
`data_dir=` required): public TFDS has no imagenet21k (`data=tfds,tfds=imagenet21k` reads
big_vision's non-public builder, split full[51200:], if you have it). Stage i1k: TFDS
imagenet2012 (ArrayRecord) under `data_dir=` or TFDS's default, or bigvl shards
(`data=shards`).

Arg language (all optional, comma-separated):
  stage=i21k          i21k (pretraining) | i1k (fine-tuning; needs init=)
  init=...            stage i1k: the stage-i21k workdir (or a checkpoint in it). Required to
                      train (the run fails at its start naming this arg without it).
  epochs=300          stage i21k epochs (the paper: 30 or 300)
  images=14145922     stage i21k images per epoch: ImageNet-21k's 14,197,122 (image-net.org,
                      fall 2011 release) less the 51,200 big_vision holds out for its evals
  steps=20000         stage i1k steps
  batch=...           global batch (i21k 4096, i1k 512)
  lr=...              peak lr (i21k 1e-3 Adam, i1k 0.03 SGD)
  data=, data_dir=, tfds=   the source (see Data)
  smoke               a tiny ViT, 3 steps of batch 8 on synthetic 32px images (tests, CPU)

Deviations from the paper (bigvl lacks these):
  - No RandAugment and no mixup: "medium1" is inception crop + flip here, i.e. the paper's
    "none" augmentation; expect a lower number than 85.49%.
  - Softmax cross-entropy on the single i21k label; big_vision pretrains with a sigmoid
    cross-entropy on one-hot labels and a head bias initialised to -10.
  - Fine-tuning keeps the 14 x 14 position-embedding table of pretraining and resizes it
    bilinearly to the 24 x 24 grid in every forward pass (ViT `posemb_grid=14`); the paper
    resizes the table once and then fine-tunes the 24 x 24 table.
"""

from bigvl import recipes
from bigvl.config_lib import parse_arg
import ml_collections

I21K_IMAGES = 14_197_122 - 51_200   # See the `images` arg.
I21K_CLASSES = 21_843               # big_vision's imagenet21k (timm's *_in21k heads too).
I1K_CLASSES = 1000
INIT_MISSING = recipes.required("init", "the stage=i21k workdir")

STAGES = {
    "i21k": dict(batch=4096, lr=1e-3, res=224),
    "i1k": dict(batch=512, lr=0.03, res=384),
}


def model(num_classes: int, *, posemb_grid=None) -> dict:
  """ViT-B/16 as the AugReg checkpoints (and timm's vit_base_patch16_224): class token with
  its own learned position, pre-LN blocks, LayerNorm eps 1e-6, exact GELU, a zero-initialised
  linear head on the class token, no pre-logits layer."""
  vit = dict(name="vit", variant="B/16", pool="cls", cls_posemb=True, posemb="learn",
             num_classes=num_classes, head_zero_init=True, dtype="bfloat16",
             remat="full", scan_layers=True, attention_impl="auto")
  if posemb_grid:
    vit["posemb_grid"] = posemb_grid
  return vit


def get_config(arg=None):
  arg = parse_arg(arg, stage="i21k", init="", epochs=300, images=I21K_IMAGES, steps=20_000,
                  batch=0, lr=0.0, data="", data_dir="", tfds="", smoke=False)
  if arg.stage not in STAGES:
    raise recipes.ConfigError(f"Config arg stage={arg.stage!r}; valid: {', '.join(STAGES)}.")
  paper = STAGES[arg.stage]
  batch = arg.batch or paper["batch"]
  lr = arg.lr or paper["lr"]
  res = paper["res"]
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = batch
  c.log_every = 100
  c.eval_every = 0
  c.evals = {}
  pp = f"inception_crop({res})|flip_lr|value_range(-1, 1)|keep('image', 'label')"

  if arg.stage == "i21k":
    arg.data = arg.data or "shards"
    if arg.data == "tfds" and not arg.tfds:
      raise recipes.ConfigError("stage=i21k with data=tfds needs tfds=<the ImageNet-21k TFDS "
                                "builder> (public TFDS has none): or use data=shards.")
    c.total_steps = max(int(arg.epochs * arg.images) // batch, 1)
    c.checkpoint_every = 10_000
    c.keep_every = 100_000
    c.data = dict(
        train=recipes.source(arg, tfds=arg.tfds, split="full[51200:]" if arg.data == "tfds"
                             else "train", pp=pp),
        stand_in=recipes.stand_in(image_size=res, num_classes=I21K_CLASSES),
        workers=8)
    c.model = model(I21K_CLASSES)
    c.objective = dict(name="classification")
    # big_vision configs/vit_i21k.py: Adam (0.9, 0.999), lr 1e-3, 10k warm-up steps, cosine,
    # global-norm clip 1.0, decoupled weight decay 1e-4 on kernels applied as wd x the lr
    # schedule's multiplier -- optax's adamw(weight_decay=0.1) at lr 1e-3 decays by the same
    # lr_t x 0.1 (the "wd_0.1" of the checkpoint's name).
    c.optimizer = dict(name="adamw", lr=lr, b1=0.9, b2=0.999, weight_decay=0.1,
                       warmup_steps=10_000, schedule="cosine", grad_clip=1.0)
    # 102.6M params with the 21,843-way head: the state sharded over every device.
    c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")
  else:
    arg.data = arg.data or "tfds"
    c.total_steps = arg.steps
    c.checkpoint_every = 2_000
    c.init_from = arg.init or INIT_MISSING
    c.data = dict(
        train=recipes.source(arg, tfds="imagenet2012", split="train", pp=pp),
        stand_in=recipes.stand_in(image_size=res, num_classes=I1K_CLASSES),
        workers=8)
    # The paper's number: top-1 of the head on the 50,000 validation images, each resized
    # to res x res without a crop (vision_transformer's eval pipeline), at the end.
    c.evals = dict(val=dict(name="classify", data=recipes.source(
        arg, tfds="imagenet2012", split="validation", pp=recipes.pp_resized(res))))
    # The 21,843-way head does not load (another shape): a new zero-initialised 1000-way one.
    c.model = model(I1K_CLASSES, posemb_grid=14)
    c.objective = dict(name="classification")
    # vision_transformer's fine-tuning (vit_jax configs/common.py, augreg.py): SGD momentum
    # 0.9, batch 512, 500 warm-up steps, cosine, global-norm clip 1.0, no weight decay.
    c.optimizer = dict(name="sgd", lr=lr, b1=0.9, weight_decay=0.0, warmup_steps=500,
                       schedule="cosine", grad_clip=1.0)
    # 86.6M params: data parallel.
    c.sharding = dict(mesh=dict(data=-1, fsdp=1, tensor=1), rules="dp")

  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    recipes.smoke(c)
    c.init_from = ""
    c.model.update(variant="mu/8", remat="none", scan_layers=False, attention_impl="xla",
                   dtype="float32")
    if "posemb_grid" in c.model:
      c.model.posemb_grid = 2          # 16px at init, resized to the 32px crops' 4 x 4 grid.
    c.data.stand_in.image_size = 32
    c.data.train.image_size = 32
    c.data.train.pp = "inception_crop(32)|flip_lr|value_range(-1, 1)|keep('image', 'label')"
  return c
