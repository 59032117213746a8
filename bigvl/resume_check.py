"""A resumed run is the same run, or it is refused: the new config against the workdir's.

A workdir that holds checkpoints belongs to the run its `config.json` describes. Starting
it with another config must not silently train a different run on top of those
checkpoints (or, as a shape mismatch, take them for damaged). So before anything is written
the resolved config is compared with `config.json`, key by key:

- keys that do not make it another run (`FREE`, `FREE_LEAVES`: how often it logs,
  evaluates and checkpoints, what it evaluates, the mesh and kernels that compute the same
  numbers, the data workers, failure policies) may differ; the run says which did;
- any other difference (model, objective, seed, batch, data, optimizer and schedule,
  `total_steps` included, since the schedule spans it) is refused with every changed key,
  old -> new, unless `config.allow_changes` names it (or a prefix of it:
  `allow_changes="optimizer"` allows `optimizer.lr`).
"""

from __future__ import annotations

import json

from bigvl import config_lib, storage

# Keys (or prefixes) that change what is logged and when, how the same numbers are computed
# and laid out (mesh, kernels, remat, accumulation; a restore reshards), how data is read,
# failure policies, and the init sources (read at step 0 only).
FREE = ("log_every", "eval_every", "evals", "checkpoint_every", "keep_checkpoints",
        "keep_every", "compilation_cache_dir", "peak_tflops", "allow_changes", "sharding",
        "grad_accum_steps", "nonfinite", "init_from", "init_subtree", "init_into", "init_also",
        "data.workers", "data.prefetch", "data.device_normalize", "data.on_corrupt",
        "data.stand_in")
# Option names that mean the same wherever they stand (model.image.attention_impl, ...).
FREE_LEAVES = ("attention_impl", "remat", "loss_impl", "chunked")
_UNSET = "<unset>"


def flatten(tree, prefix: str = "") -> dict:
  """{"a.b.c": leaf} of a nested dict (lists are leaves)."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and v:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _matches(key: str, patterns) -> bool:
  return any(key == p or key.startswith(p + ".") for p in patterns)


def differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
  """(key, old value, new value) of every leaf that differs, sorted by key."""
  a, b = flatten(old), flatten(new)
  return [(k, a.get(k, _UNSET), b.get(k, _UNSET)) for k in sorted(set(a) | set(b))
          if a.get(k, _UNSET) != b.get(k, _UNSET)]


def has_checkpoints(workdir: str) -> bool:
  return any(n.isdigit() for n in storage.listdir(storage.join(workdir, "checkpoints")))


def allowed_keys(config) -> list[str]:
  value = config.get("allow_changes", "") or ""
  if isinstance(value, str):
    value = value.split(",")
  return [v.strip() for v in value if v and v.strip()]


def check(workdir: str, config) -> list[str]:
  """ConfigError when `workdir` holds checkpoints of a run whose config.json differs from
  `config` (resolved) in a key that is neither FREE nor in `config.allow_changes`.
  Returns lines describing the changes that were let through (for the log)."""
  path = storage.join(workdir, "config.json")
  if not storage.exists(path) or not has_checkpoints(workdir):
    return []  # Nothing to resume: a new run.
  try:
    old = json.loads(storage.read_text(path))
  except (ValueError, UnicodeDecodeError) as e:
    raise config_lib.ConfigError(
        f"{path} is not valid JSON ({e}); it describes the checkpoints beside it, so the run "
        "cannot tell whether it is the same run. Restore it, or use a new --workdir.") from e
  new = json.loads(config.to_json())
  allowed = allowed_keys(config)
  changed = differences(old, new)
  refused = [c for c in changed if not _matches(c[0], FREE) and not _matches(c[0], allowed)
             and c[0].rsplit(".", 1)[-1] not in FREE_LEAVES]
  if refused:
    listing = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in refused)
    keys = ",".join(k for k, _, _ in refused)
    raise config_lib.ConfigError(
        f"--workdir {workdir} holds checkpoints of another run: the config differs from its "
        f"config.json in {len(refused)} key(s): {listing}. Start the new run in a new "
        f"--workdir, or, to resume these checkpoints with the change on purpose, add "
        f"--config.allow_changes='{keys}'. Nothing was changed in the workdir.")
  return [f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in changed if k != "allow_changes"]


def _show(value) -> str:
  text = value if value is _UNSET else json.dumps(value)
  return text if len(text) <= 80 else text[:77] + "..."
