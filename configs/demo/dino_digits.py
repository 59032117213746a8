"""DINO on the built-in digits scans: self-distillation with an EMA teacher and multi-crop,
judged by a linear probe and kNN on the teacher's frozen features.

    python -m bigvl.train --config configs/demo/dino_digits.py --workdir workdirs/dino_digits

Arg: `steps=N,batch=N,locals=N,lsize=N,lmin=F,lmax=F,gmin=F,jitter=F,blur=F,solarize=F,
centering=ema|sinkhorn,koleo=F,depth=N,width=N,pool=cls|gap|map,lr=F,tt=F,tm=F,k=N,seed=N`
(e.g. `dino_digits.py:locals=2`; `tt`: teacher temperature, `tm`: teacher momentum, `k`:
prototypes).

Defaults: the backbone pools its class token (the paper's feature), KoLeo on the student's
features (weight 0.1), the paper's EMA centring, two global crops of 30-100% and no local
crops (faster steps, so more epochs fit), no photometric augmentation, lr 2e-3, 5000 steps.
Compare the probes with the same encoder at its random init (`python -m bigvl.eval --workdir
DIR --random_init`). docs/self_supervised.md has the measured results, their spread over
seeds and machines, and the variants tried before these defaults.
"""

from bigvl.config_lib import parse_arg
import ml_collections

PP_EVAL = "resize(16)|value_range(-1, 1)"


def get_config(arg=None):
  # Photometric augmentation (jitter, blur, solarize) and local crops are off by default;
  # docs/self_supervised.md says why.
  arg = parse_arg(arg, steps=5000, batch=64, locals=0, lsize=8, lmin=0.3, lmax=0.6, gmin=0.3,
                  jitter=0.0, blur=0.0, solarize=0.0, centering="ema", koleo=0.1, depth=4,
                  lr=2e-3, tt=0.04, tm=0.99, k=256, pool="cls", width=64, seed=0)
  c = ml_collections.ConfigDict()
  c.seed = arg.seed
  c.total_steps = arg.steps
  c.batch_size = arg.batch
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 1000

  vr = lambda key: f"value_range(-1, 1, key='{key}')"
  c.data = dict(
      train=dict(name="digits", split="train",
                 # 2 global 16x16 crops of gmin-100% of the scan, `locals` lsize x lsize crops of
                 # lmin-lmax of it.
                 pp=f"multi_crop(16, {arg.lsize}, num_global=2, num_local={arg.locals}, "
                    f"global_scale=({arg.gmin}, 1.0), local_scale=({arg.lmin}, {arg.lmax}), "
                    f"flip=False, jitter={arg.jitter}, blur={arg.blur}, "
                    f"solarize={arg.solarize}, channels=1)|"
                    f"{vr('crops_global')}|"
                    + (f"{vr('crops_local')}|keep('crops_global', 'crops_local')" if arg.locals
                       else "keep('crops_global')")),
  )
  c.model = dict(
      name="dino",
      backbone=dict(width=arg.width, depth=arg.depth, mlp_dim=4 * arg.width, num_heads=4,
                    patch_size=4, posemb="learn", pool=arg.pool),
      out_dim=arg.k, hidden_dim=256, bottleneck_dim=64, head_layers=3,
  )
  c.objective = dict(name="dino", student_temp=0.1, teacher_temp=arg.tt,
                     teacher_momentum=arg.tm, center_momentum=0.9, centering=arg.centering,
                     koleo_weight=arg.koleo)
  c.optimizer = dict(lr=arg.lr, warmup_steps=200, weight_decay=0.04, schedule="cosine")
  c.evals = dict(
      probe=dict(name="fewshot", data=dict(name="digits", split="test", pp=PP_EVAL),
                 shots=(10,), full=True),
      knn=dict(name="knn", data=dict(name="digits", split="test", pp=PP_EVAL), k=10),
  )
  return c
