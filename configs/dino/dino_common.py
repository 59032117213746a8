"""What every DINO config shares (Caron et al. 2021, "Emerging Properties in Self-Supervised
Vision Transformers"): the student ViT with its projection head, the multi-crop data of
ImageNet-1k, the self-distillation objective with its teacher schedules, and the optimizer.

The setting files beside this one (s16.py, b16.py) fix a variant and document the number it
reproduces; fork one of them, or call `get_config` here with another variant.

Where the values come from: the paper (Sec. 4.1 implementation details: AdamW, batch 1024,
lr = 0.0005 x batch / 256 after a 10-epoch linear warm-up then cosine, weight decay cosine
0.04 -> 0.4, student temperature 0.1, teacher temperature 0.04 -> 0.07 over the first 30
epochs, teacher momentum 0.996 -> 1 cosine, head output 65,536) and the authors' release
(github.com/facebookresearch/dino): main_dino.py's defaults and the `args` files of the
released checkpoints (multi-crop 2 x 224 of 25-100% + 10 x 96 of 5-25% of the image).

Arg language of every setting file (all optional, comma-separated):
  epochs=800          pretraining epochs (s16: 800, b16: 400, as the released checkpoints;
                      the paper also reports 100 and 300)
  batch=1024          global batch; lr = blr x batch / 256
  blr=...             base lr per 256 images (s16: 5e-4, b16: 7.5e-4)
  locals=10           local 96px crops per image (0: two global crops only)
  data=tfds           tfds (TFDS imagenet2012, ArrayRecord, under data_dir or TFDS's default)
                      | shards (bigvl shards of ImageNet from tools/make_dataset.py; data_dir
                      required)
  data_dir=...        TFDS data_dir, or the shards' --out
  eval_dir=...        TFDS data_dir of imagenet2012 for a k-NN eval of the teacher (a cheap
                      proxy, see `knn_eval`); "" (default) no evals
  smoke               a tiny DINO, 3 steps of batch 8 on synthetic 32px images (tests, CPU)

Deviations from the paper, common to every DINO setting (bigvl lacks these):
  - Weight decay is constant at 0.04 (the paper's start value); the paper's cosine schedule
    of the weight decay to 0.4 is not in bigvl's optimizer.
  - The last layer of the head is not frozen during the first epoch(s) (`freeze_last_layer`).
  - No stochastic depth (the release's drop_path_rate 0.1).
  - Gradient clipping by the global norm; the release clips each parameter's gradient norm.
  - Photometric augmentation: brightness/contrast jitter 0.4 on every crop, Gaussian blur
    with probability 0.5 and solarisation with 0.1 on every crop (the per-crop averages of
    the release's: global crop 1 blur 1.0, global crop 2 blur 0.1 + solarise 0.2, local
    crops blur 0.5); no saturation/hue jitter, no random grayscale.
  - The head's last layer is always weight-normalised (the release's norm_last_layer=True).
"""

from bigvl import recipes
from bigvl.config_lib import parse_arg
import ml_collections

IMAGENET_TRAIN = 1_281_167      # Images in imagenet2012's train split (TFDS).
GLOBAL, LOCAL = 224, 96         # Crop sizes.
GLOBAL_SCALE = (0.25, 1.0)      # The released checkpoints' args (main_dino.py default: 0.4-1).
LOCAL_SCALE = (0.05, 0.25)      # ... (main_dino.py default: 0.05-0.4).

# Per variant: the released checkpoint's settings (see the setting files for the sources).
SETTINGS = {
    "S/16": dict(epochs=800, blr=5e-4, min_lr=1e-6, grad_clip=3.0, tt_warmup_epochs=30),
    "B/16": dict(epochs=400, blr=7.5e-4, min_lr=2e-6, grad_clip=0.3, tt_warmup_epochs=50),
}


def steps_per_epoch(batch: int) -> int:
  return max(IMAGENET_TRAIN // batch, 1)   # The release drops the last partial batch.


def pp_train(global_size: int = GLOBAL, local_size: int = LOCAL, locals_: int = 10) -> str:
  """Multi-crop with photometric augmentation, then ImageNet mean/std on every crop."""
  norm = lambda key: f"normalize('imagenet', key='{key}')"
  crops = (f"multi_crop({global_size}, {local_size}, num_global=2, num_local={locals_}, "
           f"global_scale={GLOBAL_SCALE}, local_scale={LOCAL_SCALE}, flip=True, "
           f"jitter=0.4, blur=0.5, solarize=0.1)")
  if locals_:
    return (f"{crops}|{norm('crops_global')}|{norm('crops_local')}|"
            "keep('crops_global', 'crops_local')")
  return f"{crops}|{norm('crops_global')}|keep('crops_global')"


PP_EVAL = "resize_small(256)|central_crop(224)|normalize('imagenet')"


def knn_eval(eval_dir: str) -> dict:
  """20-NN on the teacher's class-token features of imagenet2012 (bigvl's `knn`: cosine,
  similarity-weighted votes). The paper's protocol is the full train split as memory and
  the 50,000 validation images, votes weighted by exp(sim / 0.07); bigvl's evaluator holds
  the whole (test x train) similarity matrix on the host, so this runs on 10% of each split:
  a cheap proxy to watch during training, not the paper's number."""
  data = dict(name="tfds", dataset="imagenet2012", split="validation[:10%]",
              data_dir=eval_dir, pp=PP_EVAL)
  return dict(name="knn", data=data, train_split="train[:10%]", k=20)


def get_config(variant: str, arg=None, **defaults) -> ml_collections.ConfigDict:
  """DINO pretraining of `variant` ("S/16", "B/16") on ImageNet-1k."""
  paper = SETTINGS[variant]
  arg = parse_arg(arg, **dict(dict(epochs=paper["epochs"], batch=1024, blr=paper["blr"],
                                   locals=10, data="tfds", data_dir="", eval_dir="",
                                   smoke=False), **defaults))
  if arg.locals < 0:
    raise recipes.ConfigError(f"Config arg locals={arg.locals} must be >= 0.")
  epoch = steps_per_epoch(arg.batch)
  lr = arg.blr * arg.batch / 256
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = arg.batch
  c.total_steps = int(arg.epochs * epoch)
  c.log_every = 100
  c.eval_every = 20 * epoch
  c.checkpoint_every = 5_000
  c.keep_every = 50 * epoch

  c.data = dict(
      train=recipes.source(arg, tfds="imagenet2012", split="train",
                           pp=pp_train(locals_=arg.locals)),
      stand_in=recipes.stand_in(image_size=256, num_classes=1000),
      workers=16,       # Twelve crops an image: the host's decoding is the usual bottleneck.
  )
  c.model = dict(
      name="dino",
      # The release's ViT: class token (with its own position), learned positions (resized
      # for the 96px crops), pre-LN blocks, LayerNorm eps 1e-6; the class token is the feature.
      backbone=dict(variant=variant, pool="cls", cls_posemb=True, posemb="learn",
                    remat="full", scan_layers=True, attention_impl="auto"),
      # DINOHead: 3-layer MLP 2048 wide (GELU), 256-d bottleneck, L2 norm, weight-normalised
      # linear layer to 65,536 prototypes.
      out_dim=65_536, hidden_dim=2048, bottleneck_dim=256, head_layers=3,
      dtype="bfloat16",
  )
  c.objective = dict(
      name="dino", student_temp=0.1,
      teacher_temp=0.07, warmup_teacher_temp=0.04,
      warmup_teacher_temp_steps=paper["tt_warmup_epochs"] * epoch,
      teacher_momentum=0.996,          # Cosine to 1 over the run.
      center_momentum=0.9, centering="ema",
  )
  # AdamW, 10 warm-up epochs to lr = blr x batch / 256, cosine to min_lr. Weight decay on
  # every weight matrix and on the position embedding and class token (the release decays
  # every parameter of 2 or more dimensions, not biases and norms). Constant 0.04: see the
  # deviations above.
  c.optimizer = dict(name="adamw", lr=lr, b1=0.9, b2=0.999, weight_decay=0.04,
                     wd_pattern=r".*/(kernel|last_layer|pos_embedding|cls)$",
                     warmup_steps=10 * epoch, schedule="cosine",
                     min_lr_ratio=paper["min_lr"] / lr, grad_clip=paper["grad_clip"])
  if variant.startswith("S/"):
    # Student 44.0M params (21.7M backbone + 22.3M head): data parallel.
    c.sharding = dict(mesh=dict(data=-1, fsdp=1, tensor=1), rules="dp")
  else:
    # Student 108.9M (85.8M backbone + 23.1M head) and its teacher: sharded over every device.
    c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")
  c.evals = dict(knn=knn_eval(arg.eval_dir)) if arg.eval_dir else {}
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    smoke(c, arg)
  return c


def smoke(c, arg) -> None:
  """A tiny student of the same structure on 32px global and 16px local crops: 3 CPU steps."""
  recipes.smoke(c)
  c.model.backbone.update(variant="mu/8", remat="none", scan_layers=False, attention_impl="xla")
  c.model.update(out_dim=64, hidden_dim=32, bottleneck_dim=16, dtype="float32")
  c.data.stand_in.image_size = 48
  c.data.train.image_size = 48
  c.data.train.pp = pp_train(32, 16, min(arg.locals, 2))
  c.objective.warmup_teacher_temp_steps = 2


# The teacher's backbone in a DINO run's checkpoint (the objective state holds the teacher,
# a copy of the student's tree): what the linear probe loads.
TEACHER_BACKBONE = "objective_state/teacher/student/backbone"
INIT_MISSING = recipes.required("init", "DINO pretraining workdir")


def get_linprobe_config(arg=None) -> ml_collections.ConfigDict:
  """Linear evaluation of a DINO run's teacher backbone on ImageNet-1k (eval_linear.py of the
  release: SGD momentum 0.9, lr 0.001 x batch / 256, no weight decay, cosine to 0, 100
  epochs, batch 1024, RandomResizedCrop + flip; a linear layer on frozen features)."""
  arg = parse_arg(arg, size="S", init="", epochs=100, batch=1024, blr=1e-3, data="tfds",
                  data_dir="", smoke=False)
  if arg.size not in ("S", "B"):
    raise recipes.ConfigError(f"Config arg size={arg.size!r}; valid: S, B.")
  variant = f"{arg.size}/16"
  epoch = steps_per_epoch(arg.batch)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = arg.batch
  c.total_steps = int(arg.epochs * epoch)
  c.log_every = 100
  c.eval_every = 10 * epoch
  c.checkpoint_every = 5_000
  c.init_from = arg.init or INIT_MISSING
  c.init_subtree = TEACHER_BACKBONE
  pp = f"inception_crop({GLOBAL})|flip_lr|normalize('imagenet')|keep('image', 'label')"
  c.data = dict(
      train=recipes.source(arg, tfds="imagenet2012", split="train", pp=pp),
      stand_in=recipes.stand_in(image_size=256, num_classes=1000),
      workers=8,
  )
  # The backbone as the release builds it, its final-normed class token into a new head.
  c.model = dict(name="vit", variant=variant, pool="cls", cls_posemb=True, posemb="learn",
                 num_classes=1000, attention_impl="auto", dtype="bfloat16")
  c.objective = dict(name="classification")
  c.optimizer = dict(name="sgd", lr=arg.blr * arg.batch / 256, b1=0.9, weight_decay=0.0,
                     warmup_steps=0, schedule="cosine", grad_clip=0.0,
                     frozen_pattern=r"(?!head/).*")   # Only the linear layer trains.
  c.sharding = dict(mesh=dict(data=-1, fsdp=1, tensor=1), rules="dp")
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    recipes.smoke(c)
    c.init_from = ""
    c.init_subtree = ""
    c.model.update(variant="mu/8", attention_impl="xla", dtype="float32")
    c.data.stand_in.image_size = 48
    c.data.train.image_size = 48
    c.data.train.pp = c.data.train.pp.replace(f"inception_crop({GLOBAL})", "inception_crop(32)")
  return c
