"""What every MAE config shares (He et al. 2022, "Masked Autoencoders Are Scalable Vision
Learners"): the pretraining model and objective of a variant, ImageNet-1k data, and the
end-to-end fine-tuning and linear-probe settings that read the pretrained encoder.

The setting files beside this one (b16.py, l16.py, finetune_b16.py, linprobe_b16.py) fix a
setting and document the number it reproduces; fork one of them, or call the builders here.

Where the values come from: the paper's appendix (pretraining: AdamW b2 0.95, base lr 1.5e-4,
wd 0.05, 40 warmup epochs, cosine; batch 4096; lr = base lr x batch / 256) and the authors'
PyTorch release (github.com/facebookresearch/mae: PRETRAIN.md, FINETUNE.md, main_*.py), whose
FINETUNE.md gives the hyper-parameters used for the released 1600-epoch norm-pix checkpoints.

Arg language, pretraining (b16.py, l16.py; all optional, comma-separated):
  epochs=1600         pretraining epochs (the paper: 800 or 1600; its Table 3 numbers are 1600)
  batch=4096          global batch; lr = 1.5e-4 x batch / 256
  mask=0.75           mask ratio
  data=tfds           tfds (TFDS imagenet2012, ArrayRecord, under data_dir or TFDS's default)
                      | shards (bigvl shards of ImageNet, tools/make_dataset.py; data_dir needed)
  data_dir=...        TFDS data_dir, or the shards' --out
  smoke               a tiny MAE, 3 steps of batch 8 on synthetic 32px images (tests, CPU)
Fine-tuning (finetune_b16.py) and linear probe (linprobe_b16.py) add:
  size=B              B | L (ViT-B/16 or ViT-L/16; a bare `L` works)
  init=...            the MAE pretraining workdir (or a checkpoint in it): its "enc" subtree
                      initialises the classifier. Required to train (not with smoke).
  epochs=, batch=, blr=   override the paper's epochs, batch and base lr (lr = blr x batch / 256)
"""

from bigvl import recipes
from bigvl.config_lib import parse_arg
import ml_collections

IMAGENET_TRAIN = 1_281_167      # Images in imagenet2012's train split (TFDS).
NUM_CLASSES = 1000
RES = 224
# What init_from says when no init= was given: training then fails at the start, naming the
# arg, while the planner and the build test (which read no checkpoint) still build the run.
INIT_MISSING = recipes.required("init", "MAE pretraining workdir")


def steps(epochs: float, batch: int) -> int:
  return max(int(epochs * IMAGENET_TRAIN) // batch, 1)


def pp_pretrain(res: int = RES) -> str:
  """RandomResizedCrop(scale 0.2-1) + flip + ImageNet mean/std, as main_pretrain.py."""
  return (f"inception_crop({res}, scale=(0.2, 1.0))|flip_lr|normalize('imagenet')|"
          "keep('image')")


def pp_finetune(res: int = RES) -> str:
  """RandomResizedCrop (0.08-1) + flip: timm's train transform without RandAugment and
  random erasing (not in bigvl)."""
  return f"inception_crop({res})|flip_lr|normalize('imagenet')|keep('image', 'label')"


def pp_linprobe(res: int = RES) -> str:
  """RandomResizedCrop (0.08-1) + flip, as main_linprobe.py."""
  return f"inception_crop({res})|flip_lr|normalize('imagenet')|keep('image', 'label')"


def encoder(variant: str) -> dict:
  """The ViT of MAE: fixed 2-D sin-cos position embeddings, pre-LN blocks, a final norm."""
  return dict(variant=variant, posemb="sincos2d", remat="full", scan_layers=True,
              attention_impl="auto")


def mae_model(variant: str) -> dict:
  """MAE with the paper's decoder: 8 blocks of width 512, 16 heads (MLP 4x)."""
  return dict(name="mae", encoder=encoder(variant), decoder_width=512, decoder_depth=8,
              decoder_mlp_dim=2048, decoder_heads=16, channels=3, dtype="bfloat16")


def _data(arg, pp: str) -> dict:
  return dict(
      train=recipes.source(arg, tfds="imagenet2012", split="train", pp=pp),
      stand_in=recipes.stand_in(image_size=RES, num_classes=NUM_CLASSES),
      workers=8,
  )


def _common(c, arg) -> None:
  c.seed = 0
  c.log_every = 100
  c.eval_every = 0
  c.evals = {}


def get_pretrain_config(variant: str, arg=None, **defaults) -> ml_collections.ConfigDict:
  """MAE pretraining of `variant` ("B/16", "L/16") on ImageNet-1k."""
  arg = parse_arg(arg, **dict(dict(epochs=1600, batch=4096, mask=0.75, data="tfds",
                                   data_dir="", smoke=False), **defaults))
  c = ml_collections.ConfigDict()
  _common(c, arg)
  c.batch_size = arg.batch
  c.total_steps = steps(arg.epochs, arg.batch)
  c.checkpoint_every = 5_000
  c.keep_every = 50_000
  c.data = _data(arg, pp_pretrain())
  c.model = mae_model(variant)
  c.objective = dict(name="mae", mask_ratio=arg.mask, norm_pix_loss=True)
  # Paper appendix (pretraining table): AdamW b1 0.9, b2 0.95, base lr 1.5e-4 x batch/256,
  # wd 0.05, 40 warmup epochs, cosine decay; no gradient clipping in the release.
  c.optimizer = dict(name="adamw", lr=1.5e-4 * arg.batch / 256, b1=0.9, b2=0.95,
                     weight_decay=0.05, warmup_steps=steps(40, arg.batch), schedule="cosine",
                     grad_clip=0.0)
  # Encoder + decoder are over 100M params at B/16: the state sharded over every device.
  c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    recipes.smoke(c)
    _tiny_encoder(c.model.encoder)
    c.model.update(decoder_width=32, decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2,
                   dtype="float32")
    _tiny_data(c)
  return c


# Fine-tuning (FINETUNE.md, for the 1600-epoch norm-pix checkpoints): epochs, base lr, and
# the layer decay / drop path bigvl does not have (kept here to state the deviation).
FINETUNE = {
    "B": dict(epochs=100, blr=5e-4, layer_decay=0.65, drop_path=0.1),
    "L": dict(epochs=50, blr=1e-3, layer_decay=0.75, drop_path=0.2),
}


def _size(arg) -> str:
  if arg.size not in FINETUNE:
    raise recipes.ConfigError(f"Config arg size={arg.size!r}; valid: {', '.join(FINETUNE)}.")
  return arg.size


def classifier(variant: str, *, fc_norm: bool) -> dict:
  """The `vit` classifier whose params match the MAE encoder's (load with init_subtree="enc").

  fc_norm: MAE's fine-tuning (--global_pool): the mean token, then a new LayerNorm
  (`post_norm`), then the head; the encoder's final norm is not used. Otherwise (the linear
  probe) the encoder's final norm on every token, then the mean token, then the head.
  """
  return dict(name="vit", **encoder(variant), pool="gap", norm_pooled=fc_norm,
              num_classes=NUM_CLASSES, dtype="bfloat16")


def _init(c, arg) -> None:
  c.init_from = arg.init or INIT_MISSING
  c.init_subtree = "enc"


def get_finetune_config(arg=None, **defaults) -> ml_collections.ConfigDict:
  """End-to-end fine-tuning of a pretrained MAE encoder as an ImageNet-1k classifier."""
  arg = parse_arg(arg, **dict(dict(size="B", init="", epochs=0, batch=1024, blr=0.0,
                                   data="tfds", data_dir="", smoke=False), **defaults))
  size = _size(arg)
  paper = FINETUNE[size]
  epochs = arg.epochs or paper["epochs"]
  blr = arg.blr or paper["blr"]
  c = ml_collections.ConfigDict()
  _common(c, arg)
  c.batch_size = arg.batch
  c.total_steps = steps(epochs, arg.batch)
  c.checkpoint_every = 5_000
  _init(c, arg)
  c.data = _data(arg, pp_finetune())
  c.model = classifier(f"{size}/16", fc_norm=True)
  c.objective = dict(name="classification", label_smoothing=0.1)
  # FINETUNE.md / paper appendix: AdamW (0.9, 0.999), lr = blr x batch / 256, wd 0.05,
  # 5 warmup epochs, cosine to 1e-6; no gradient clipping.
  lr = blr * arg.batch / 256
  c.optimizer = dict(name="adamw", lr=lr, b1=0.9, b2=0.999, weight_decay=0.05,
                     warmup_steps=steps(5, arg.batch), schedule="cosine",
                     min_lr_ratio=1e-6 / lr, grad_clip=0.0)   # main_finetune.py's min_lr 1e-6.
  _classifier_sharding(c, size)
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    _smoke_classifier(c)
  return c


def get_linprobe_config(arg=None, **defaults) -> ml_collections.ConfigDict:
  """Linear probe: a frozen pretrained MAE encoder, a new linear head trained on ImageNet-1k."""
  arg = parse_arg(arg, **dict(dict(size="B", init="", epochs=90, batch=16_384, blr=1e-3,
                                   data="tfds", data_dir="", smoke=False), **defaults))
  size = _size(arg)
  c = ml_collections.ConfigDict()
  _common(c, arg)
  c.batch_size = arg.batch
  c.total_steps = steps(arg.epochs, arg.batch)
  c.checkpoint_every = 2_000
  _init(c, arg)
  c.data = _data(arg, pp_linprobe())
  c.model = classifier(f"{size}/16", fc_norm=False)
  c.objective = dict(name="classification", label_smoothing=0.0)
  # Paper / main_linprobe.py: LARS, momentum 0.9, lr = 0.1 x batch / 256, no wd, 10 warmup
  # epochs, cosine. bigvl has no LARS: SGD with momentum 0.9 at DINO's linear-eval base lr
  # 1e-3 (see the deviation in linprobe_b16.py). Only the head trains.
  # 1,024 images per device on v4-32: the step's activations need two micro-batches to fit
  # 32 GiB (python -m bigvl.plan); the averaged gradient is the same.
  c.grad_accum_steps = 2
  c.optimizer = dict(name="sgd", lr=arg.blr * arg.batch / 256, b1=0.9, weight_decay=0.0,
                     warmup_steps=steps(10, arg.batch), schedule="cosine", grad_clip=0.0,
                     frozen_pattern=r"(?!head/).*")
  _classifier_sharding(c, size)
  c = ml_collections.ConfigDict(c)
  if arg.smoke:
    _smoke_classifier(c)
  return c


def _classifier_sharding(c, size: str) -> None:
  if size == "B":   # 86M params: plain data parallel.
    c.sharding = dict(mesh=dict(data=-1, fsdp=1, tensor=1), rules="dp")
  else:             # 304M: the state sharded over every device.
    c.sharding = dict(mesh=dict(data=1, fsdp=-1, tensor=1), rules="fsdp")


def _tiny_encoder(enc) -> None:
  enc.update(variant="mu/8", remat="none", scan_layers=True, attention_impl="xla")


def _tiny_data(c) -> None:
  c.data.stand_in.image_size = 32
  c.data.train.image_size = 32
  c.data.train.pp = c.data.train.pp.replace(f"({RES}", "(32")


def _smoke_classifier(c) -> None:
  recipes.smoke(c)
  c.init_from = ""
  c.init_subtree = ""
  c.model.update(variant="mu/8", remat="none", attention_impl="xla", dtype="float32")
  _tiny_data(c)
