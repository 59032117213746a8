"""The model card a finished run leaves in its workdir: `WORKDIR/README.md`."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys

import jax

from bigvl import storage


def _source(cfg) -> str:
  cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  if "mixture" in cfg:
    return "mixture of " + ", ".join(f"{n} ({c.get('name')}, weight {c.get('weight', 1.0)})"
                                     for n, c in sorted(cfg["mixture"].items()))
  opts = {k: v for k, v in cfg.items() if k not in ("name", "pp")}
  return f"{cfg.get('name')} {opts}".strip()


def _command() -> str:
  argv = list(sys.argv)
  if argv and argv[0].endswith(os.path.join("bigvl", "train.py")):
    argv = ["-m", "bigvl.train", *argv[1:]]  # Run as `python -m bigvl.train`.
  return " ".join(shlex.quote(a) for a in ["python", *argv])


def write(workdir: str, config, last_metrics: dict, step: int | None) -> str:
  """Writes `workdir/README.md`: what was trained, on what, the final metrics, and the
  commands to evaluate and convert this checkpoint. Returns its path."""
  workdir = storage.abspath(workdir)
  model = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
  objective = dict(config.objective)
  evals = {k: v for k, v in last_metrics.items() if k.startswith("eval/")}
  train = {k: v for k, v in last_metrics.items()
           if k.startswith(("train/loss", "data/skipped", "train/skipped_steps"))}
  lines = [
      f"# {storage.basename(workdir)}: {model.get('name')} trained with {objective.get('name')}",
      "",
      f"Written by bigvl on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
      f"at the end of the run ({jax.device_count()} {jax.devices()[0].platform} device(s), "
      f"{jax.process_count()} process(es)).",
      "",
      "## Training",
      "",
      f"- steps: {config.total_steps} (last checkpoint: step {step}), batch size "
      f"{config.batch_size}, seed {config.seed}",
      f"- data: {_source(config.data.train)}",
      f"- preprocessing: `{config.data.train.get('pp', '')}`",
      f"- optimizer: {dict(config.optimizer)}",
      f"- model: `{json.dumps(model, default=str)}`",
      f"- objective: `{json.dumps(objective, default=str)}`",
      *_init_lines(config),
      f"- the whole resolved config: `config.json`; metrics: `metrics.jsonl`, TensorBoard: "
      "`tensorboard --logdir " + shlex.quote(workdir) + "`",
      "",
      "## Final metrics",
      "",
      "| metric | value |",
      "|---|---|",
      *[f"| `{k}` | {v:.4f} |" for k, v in sorted({**train, **evals}.items())],
      "",
      "## Use it",
      "",
      "```bash",
      "# Evaluate a checkpoint with the config's evaluators (writes eval_results/):",
      f"python -m bigvl.eval --workdir {shlex.quote(workdir)} [--checkpoint STEP]",
      "# Params-only start of another run from these weights:",
      f"python -m bigvl.train --config OTHER.py --workdir NEW --config.init_from={shlex.quote(workdir)}",
  ]
  if model.get("name") in ("vit", "two_towers"):
    converted = shlex.quote(workdir + "_converted")
    lines += [
        "# As a converted checkpoint (bigvl.convert.load_converted), then a HF directory when",
        "# the architecture is one HF has (CLIP / SigLIP / ViT layouts):",
        f"python tools/convert_checkpoint.py from_workdir {shlex.quote(workdir)} {converted}",
        f"python tools/convert_checkpoint.py to_hf {converted} {shlex.quote(workdir + '_hf')}",
    ]
  lines += ["```", "", "Command that trained it:", "", "```bash", _command(), "```", ""]
  path = storage.join(workdir, "README.md")
  storage.write(path, "\n".join(lines))
  return path


def _init_lines(config) -> list[str]:
  """One line per params-only init source (`init_from`, `init_also`), if any."""
  sources = []
  if config.get("init_from"):
    sources.append(dict(init_from=config.init_from, init_subtree=config.get("init_subtree", ""),
                        init_into=config.get("init_into", "")))
  sources += [dict(x) for x in config.get("init_also", ())]
  lines = []
  for src in sources:
    what = f"`{src.get('init_subtree') or '(all)'}` of {src['init_from']}"
    lines.append(f"- initialised from: {what}, into `{src.get('init_into') or '(top level)'}`")
  return lines
