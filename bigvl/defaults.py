"""Every key the train loop reads, with its default and a one-line meaning.

An experiment config overrides what it needs; `config_lib.with_defaults` rejects
top-level keys not listed here (and, in the sections merged key by key —
`optimizer`, `sharding`, `data` — keys those sections do not have).
"""

import ml_collections


def get_defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                  # Seeds params, data order, augmentation and dropout.
  c.total_steps = 1000        # Optimizer steps of the run.
  c.batch_size = 256          # Global batch, over all processes and devices.
  c.log_every = 50            # Steps between progress lines / metrics.jsonl train rows.
  c.eval_every = 500          # Steps between evaluations (and always at the last step); 0: only at the end.
  c.checkpoint_every = 500    # Steps between checkpoints (and always at the last step); 0: only at the end.
  c.keep_checkpoints = 3      # Newest checkpoints kept on disk.
  c.keep_every = 0            # Also keep every checkpoint whose step is a multiple of this; 0: none.
  c.nonfinite = "stop"        # On a NaN/Inf loss or gradient: stop (keep the last good checkpoint) | skip (skip the update).
  c.grad_accum_steps = 1      # Micro-batches per step (batch_size / this each); grads are averaged.
  c.compilation_cache_dir = "auto"  # jax's persistent compilation cache: auto = $BIGVL_COMPILATION_CACHE_DIR, else <parent of workdir>/.bigvl_compilation_cache; "": off; else a directory.
  c.peak_tflops = 0.0         # Peak TFLOP/s of one device for train/mfu; 0: from a table by device kind.
  c.init_from = ""            # Params-only start: a workdir or checkpoint dir; matching params load, others stay new.
  c.init_subtree = ""         # Load only this subtree of init_from's params, as the top level ("enc" of MAE, "teacher/backbone" of DINO).
  c.init_into = ""            # ... and put it under this subtree of the new params (LiT: "img", the two-tower's image tower).
  c.allow_changes = ""        # On resume: comma-separated config keys (or prefixes) that may differ from the workdir's config.json (bigvl/resume_check.py).
  c.init_also = ()            # More sources: dicts of init_from, init_subtree, init_into (Flamingo: the LM and the image tower).

  c.model = ml_collections.ConfigDict()      # name + the model's own options (see bigvl/models).
  c.objective = ml_collections.ConfigDict()  # name + the objective's own options (see bigvl/objectives).
  c.evals = ml_collections.ConfigDict()      # eval name -> {name, every?, data?: {name, split, pp, ...}, ...evaluator options}.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"      # adamw | sgd | adafactor
  c.optimizer.lr = 1e-3           # Peak learning rate.
  c.optimizer.schedule = "cosine" # cosine | linear | constant (after warmup)
  c.optimizer.warmup_steps = 0    # Linear warmup from 0 to lr.
  c.optimizer.min_lr_ratio = 0.0  # End of decay, as a fraction of lr.
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8          # Adam's epsilon (open_clip's LAION runs: 1e-6).
  c.optimizer.weight_decay = 1e-4  # Decoupled, applied to params matching wd_pattern.
  c.optimizer.wd_pattern = r".*/kernel$"  # Regex over "/"-joined param paths.
  c.optimizer.grad_clip = 1.0     # Global norm clip; 0 disables.
  c.optimizer.frozen_pattern = "" # Regex over "/"-joined param paths never updated (LiT: "img/.*").

  c.sharding = ml_collections.ConfigDict()
  c.sharding.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: the remaining devices.
  c.sharding.rules = "dp"         # Preset name (dp | fsdp | fsdp_tp) or a list of (logical, mesh axes).

  c.data = ml_collections.ConfigDict()
  c.data.train = ml_collections.ConfigDict()  # {name, split, pp, ...source options} or {mixture: {label: {name, weight, pp?, ...}}, pp}
  c.data.stand_in = ml_collections.ConfigDict()  # A source of data.train's fields that needs no files (name="synthetic", ...): what `python -m bigvl.plan` reads instead; empty: data.train itself.
  c.data.tokenizer = ""           # Path of a sentencepiece model; "" trains one on the train captions.
  c.data.vocab_size = 96          # Vocabulary of a tokenizer trained here.
  c.data.tokenizer_type = "bpe"   # bpe | unigram, for a tokenizer trained here.
  c.data.special_tokens = ()      # Pieces a tokenizer trained here keeps whole (Flamingo: ("<image>", "<|endofchunk|>")).
  c.data.text_len = 16            # Tokens per text, after EOS, padded.
  c.data.workers = 0              # Grain worker processes; 0 reads in the main process.
  c.data.prefetch = 2             # Batches prefetched per worker.
  c.data.device_normalize = True  # A trailing value_range/normalize on uint8 images runs in the train step: uint8 crosses to the device (docs/data.md).
  c.data.on_corrupt = "skip"      # An unusable training example (undecodable image, no usable caption): skip (replace it, count it in data/skipped) | error.
  return c
