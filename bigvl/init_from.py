"""Params-only starts: the params of a new run from other checkpoints (`config.init_from`,
`config.init_subtree`, `config.init_into` and `config.init_also`), matched by path and shape.

Used once, before step 1, by a run that has no checkpoint of its own to resume.
"""

from __future__ import annotations

from bigvl import checkpoint, config_lib

OBJECTIVE_STATE_PREFIX = "objective_state/"


def init_sources(config) -> list[tuple[str, str, str]]:
  """(path, subtree, into) of `config.init_from` and of each `config.init_also` entry."""
  out = [(config.init_from, config.init_subtree, config.init_into)] if config.init_from else []
  for i, extra in enumerate(config.init_also):
    extra = dict(extra)
    unknown = set(extra) - {"init_from", "init_subtree", "init_into"}
    if unknown or not extra.get("init_from"):
      raise config_lib.ConfigError(
          f"config.init_also[{i}] = {extra}: each entry is a dict with init_from (required), "
          f"init_subtree and init_into{'; unknown ' + str(sorted(unknown)) if unknown else ''}.")
    out.append((extra["init_from"], extra.get("init_subtree", ""), extra.get("init_into", "")))
  return out


def params_from(config, params):
  """`params` with those of every init source (each one's `init_subtree`, placed under its
  `init_into`) that match by path and shape; (params, report) as checkpoint.merge_params.

  An `init_subtree` under `objective_state/` reads the source's objective state (DINO's
  teacher: `objective_state/teacher/student/backbone`). Two sources may not give the same
  param.
  """
  merged: dict = {}
  for path, subtree, into in init_sources(config):
    loaded = checkpoint.load_params(
        path, objective_state=subtree.strip("/").startswith(OBJECTIVE_STATE_PREFIX))
    if subtree:
      try:
        loaded = checkpoint.subtree(loaded, subtree)
      except ValueError as e:
        raise config_lib.ConfigError(str(e)) from e
    if into:
      loaded = {f"{into.strip('/')}/{k}": v for k, v in loaded.items()}
    clash = sorted(set(loaded) & set(merged))
    if clash:
      raise config_lib.ConfigError(f"Init source {path} gives params another source gives too, "
                                   f"e.g. {clash[:3]}; narrow init_subtree / init_into.")
    merged.update(loaded)
  return checkpoint.merge_params(params, merged)


def report_lines(config, report) -> list[str]:
  """What a params-only start loaded: a summary line, then one line per param not loaded."""
  where = ", ".join(p for p, _, _ in init_sources(config))
  lines = [f"Initialised params from {where}: {len(report['loaded'])} loaded, "
           f"{len(report['new'])} new, {len(report['mismatched'])} shape-mismatched (kept new), "
           f"{len(report['dropped'])} dropped."]
  for kind in ("new", "mismatched", "dropped"):
    lines.extend(f"  {kind}: {key}" for key in report[kind])
  return lines
