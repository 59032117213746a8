"""Loading experiment configs: `path/to/config.py[:arg]`, `--config.key=value` overrides, key checks.

Configs are plain Python files with `get_config(arg: str | None) -> ConfigDict`. The
arg is a short comma-separated language for variants, e.g. `siglip.py:B/16,batch=32768`;
each config decides what its arg means (`parse_arg` helps).

Every key the loop reads has a default in `bigvl.defaults`; a config that sets a
top-level key the loop does not know, or an override of a key that does not exist,
fails with the closest valid key, before anything is built. A config file that is not valid
Python, raises, or has no `get_config` is one ConfigError naming the file and line; values
no run can use (a learning rate <= 0, a batch size < 1) are one naming the key
(`check_values`).

`--config.objective.name=NEW` (a name other than the config's) replaces the whole
`config.objective` block by `{name: NEW}`: the new objective at its own defaults, plus the
other `--config.objective.*` overrides, whatever their order. Those may set any option the
objective takes, whether the config file sets it or not (docs/run.md).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import os
import sys
import traceback
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
  """A config that cannot be used; the message says what to change."""


def load_config_file(spec: str) -> ConfigDict:
  """Loads `path.py[:arg]` and returns `get_config(arg)` merged onto the loop's defaults.

  A file that does not parse, raises while it is imported or in `get_config`, or has no
  `get_config`, is a one-line ConfigError naming the file and line (the traceback stays on
  the error's `__cause__`); a ConfigError the config raises itself (`parse_arg`) is passed on.
  """
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise ConfigError(f"Config file not found: {path!r} (from --config={spec!r}). "
                      "Give the path of a Python file that defines get_config(), e.g. "
                      "configs/demo/siglip_digits.py.")
  module_name = "bigvl_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  if module_spec is None:
    raise ConfigError(f"{path}: not a Python file (from --config={spec!r}); a config is a .py "
                      "file that defines get_config(arg).")
  module = importlib.util.module_from_spec(module_spec)
  # The config's own directory goes first on sys.path so it may import its siblings.
  sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
  try:
    module_spec.loader.exec_module(module)
  except ConfigError:
    raise
  except SyntaxError as e:
    raise ConfigError(_syntax_message(e, path)) from e
  except Exception as e:
    raise ConfigError(f"{_raised_at(e, path)}: importing the config raised "
                      f"{_one_line(e)}; fix the config file.") from e
  finally:
    sys.path.pop(0)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"{path}: defines no get_config(arg) function; a config file must define "
                      "`def get_config(arg=None):` returning an ml_collections.ConfigDict "
                      "(see configs/demo/siglip_digits.py).")
  try:
    config = get_config(arg or None)
  except ConfigError:
    raise
  except Exception as e:
    first = getattr(getattr(get_config, "__code__", None), "co_firstlineno", None)
    raise ConfigError(f"{_raised_at(e, path, first)}: get_config({arg or None!r}) raised "
                      f"{_one_line(e)}; fix the config file.") from e
  if not isinstance(config, (ConfigDict, dict)):
    raise ConfigError(f"{path}: get_config({arg or None!r}) returned {type(config).__name__}, "
                      "not an ml_collections.ConfigDict (or dict).")
  if not isinstance(config, ConfigDict):
    config = ConfigDict(config)
  return with_defaults(config)


def _one_line(e: BaseException) -> str:
  """`Type: first line of the message`, at most 300 characters."""
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def _syntax_message(e: SyntaxError, path: str) -> str:
  """`file:line: message ('the line')`: the file is the config or the sibling it imports."""
  where = e.filename if e.filename and not e.filename.startswith("<") else path
  line = f":{e.lineno}" if e.lineno else ""
  text = (e.text or "").strip()
  shown = f" ({text!r})" if text else ""
  return (f"{where}{line}: {e.msg}{shown}: the config file is not valid Python; fix it "
          "there.")


def _raised_at(e: BaseException, path: str, fallback_line: int | None = None) -> str:
  """`file:line` of the innermost frame of `e`'s traceback in the config's directory (the
  config or a sibling it imports), else `path[:fallback_line]`."""
  config_file = os.path.abspath(path)
  directory = os.path.dirname(config_file)
  for frame in reversed(traceback.extract_tb(e.__traceback__)):
    if frame.filename and os.path.dirname(os.path.abspath(frame.filename)) == directory:
      name = path if os.path.abspath(frame.filename) == config_file else frame.filename
      return f"{name}:{frame.lineno}"
  return f"{path}:{fallback_line}" if fallback_line else path


def with_defaults(config: ConfigDict) -> ConfigDict:
  """Returns the loop's defaults updated by `config`; unknown top-level keys are an error."""
  from bigvl import defaults  # Local: defaults imports nothing heavy, but keep config_lib standalone.

  base = defaults.get_defaults()
  check_keys(config, base)
  merged = base.to_dict()
  _deep_update(merged, config.to_dict())
  return ConfigDict(merged)


def _deep_update(base: dict, new: dict) -> None:
  for k, v in new.items():
    if isinstance(v, dict) and isinstance(base.get(k), dict) and k in _MERGED_SECTIONS:
      _deep_update(base[k], v)
    else:
      base[k] = v


# Sections whose defaults are merged key by key; all others are replaced whole, since their
# keys belong to a model, objective or source the config chooses.
_MERGED_SECTIONS = {"sharding", "optimizer", "data"}


def check_keys(config: ConfigDict, reference: ConfigDict, prefix: str = "") -> None:
  """Raises ConfigError on the first key of `config` (within merged sections) absent from `reference`."""
  for key in config.keys():
    full = prefix + key
    if key not in reference:
      raise ConfigError(_unknown_key_message(full, [prefix + k for k in reference.keys()]))
    if key in _MERGED_SECTIONS and isinstance(config[key], ConfigDict) and not prefix:
      check_keys(config[key], reference[key], prefix=full + ".")


def _unknown_key_message(key: str, valid: list[str]) -> str:
  close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  return f"Unknown config key {key!r}.{hint}"


def flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
  """All dotted keys of `config`, leaves and sections."""
  out = []
  for k, v in config.items():
    out.append(prefix + k)
    if isinstance(v, ConfigDict):
      out.extend(flat_keys(v, prefix + k + "."))
  return out


OBJECTIVE_NAME = "objective.name"  # The override that replaces the objective block (docs/run.md).


def apply_overrides(config: ConfigDict, overrides: list[tuple[str, str]]) -> ConfigDict:
  """Applies `[("model.image.width", "128"), ...]`; values are parsed as Python literals.

  A key that does not exist is an error naming the closest existing key: a typo must
  never silently train with the default. `objective.name` set to another objective comes
  first and replaces the `objective` block by `{name: NEW}`; an `objective.<option>` the
  block lacks is accepted when the objective takes that option (typed by its default).
  The result's values are then checked (`check_values`), so a CLI refuses a learning rate
  <= 0 or an empty batch with the other flag errors, before anything is built.
  """
  config = ConfigDict(config.to_dict())
  # Stable: every objective.name first, the others in their command-line order.
  for key, raw in sorted(overrides, key=lambda kv: kv[0] != OBJECTIVE_NAME):
    if key == OBJECTIVE_NAME and isinstance(config.get("objective"), ConfigDict):
      name = _parse_value(raw, "", key)
      if name != config.objective.get("name"):
        config.objective = ConfigDict({"name": name})
        continue
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
      if isinstance(node, ConfigDict) and part not in node and i == 1 and \
          parts[0] == "objective" and len(parts) == 2:
        node[part] = _parse_value(raw, _objective_option_default(config, part, raw), key)
        break
      if not isinstance(node, ConfigDict) or part not in node:
        raise ConfigError(_unknown_key_message(key, flat_keys(config)) +
                          f" (from --config.{key}={raw})")
      if i < len(parts) - 1:
        node = node[part]
    else:
      node[parts[-1]] = _parse_value(raw, node[parts[-1]], key)
  check_values(config)
  return config


def _objective_option_default(config: ConfigDict, option: str, raw: str) -> Any:
  """The default of `option` of the objective `config.objective.name` names (None: it has
  none, or takes **kwargs); ConfigError when the objective does not take `option`."""
  from bigvl.registry import OBJECTIVES, option_defaults  # Local: only this needs it.

  key = f"objective.{option}"
  name = config.objective.get("name")
  if name is None:
    raise ConfigError(f"--config.{key}={raw}: config.objective.name is not set; set it first "
                      "(--config.objective.name=...).")
  try:
    defaults = option_defaults(OBJECTIVES.get(name))
  except ValueError as e:
    raise ConfigError(f"{e} (config.objective.name, for --config.{key}={raw})") from e
  if defaults is None:  # **kwargs: any option, typed by its literal.
    return None
  if option not in defaults:
    valid = sorted(set(defaults) | {k for k in config.objective.keys() if k != "name"})
    close = difflib.get_close_matches(option, valid, n=1, cutoff=0.5)
    hint = f" Did you mean 'objective.{close[0]}'?" if close else ""
    raise ConfigError(f"Unknown config key {key!r}: objective {name!r} takes no option "
                      f"{option!r}.{hint} Its options: {', '.join(valid) or 'none'} "
                      f"(from --config.{key}={raw})")
  return defaults[option]


def check_values(config: ConfigDict) -> None:
  """ConfigError, naming the key and the fix, on a loop value no run can use: a peak
  learning rate that is not a finite number > 0, a batch size or micro-batch count (or an
  evaluator's batch_size) that is not a positive integer. Keys `config` lacks are skipped."""
  optimizer = config.get("optimizer") or {}
  lr = optimizer.get("lr") if hasattr(optimizer, "get") else None
  if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or
                         not math.isfinite(lr) or lr <= 0):
    raise ConfigError(f"config.optimizer.lr={lr!r}: the peak learning rate must be a number > 0 "
                      "(the schedule warms up to it and decays from it), e.g. "
                      "--config.optimizer.lr=1e-3.")
  ratio = optimizer.get("min_lr_ratio") if hasattr(optimizer, "get") else None
  if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or
                            not 0 <= ratio <= 1):
    raise ConfigError(f"config.optimizer.min_lr_ratio={ratio!r}: the end of the decay as a "
                      "fraction of the peak lr must be in [0, 1], e.g. "
                      "--config.optimizer.min_lr_ratio=0.0.")
  for key, what, example in (
      ("batch_size", "the global batch, a multiple of the data-parallel size", 64),
      ("grad_accum_steps", "micro-batches per step; 1: none", 1)):
    value = config.get(key)
    if value is not None and not _positive_int(value):
      raise ConfigError(f"config.{key}={value!r}: must be a positive integer ({what}), e.g. "
                        f"--config.{key}={example}.")
  evals = config.get("evals") or {}
  for name in (evals.keys() if hasattr(evals, "keys") else ()):
    cfg = evals[name]
    value = cfg.get("batch_size") if hasattr(cfg, "get") else None
    if value is not None and not _positive_int(value):
      raise ConfigError(f"config.evals.{name}.batch_size={value!r}: must be a positive integer "
                        f"(examples per evaluation batch), e.g. "
                        f"--config.evals.{name}.batch_size=256.")


def _positive_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _parse_value(raw: str, current: Any, key: str) -> Any:
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw  # A bare word is a string: --config.objective.name=clip
  if isinstance(current, bool) and isinstance(value, int) and not isinstance(value, bool):
    raise ConfigError(f"--config.{key}: expected True or False, got {raw!r}.")
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
    value = type(current)(value)
  if isinstance(current, ConfigDict) and isinstance(value, dict):
    return ConfigDict(value)
  if current is not None and not isinstance(value, type(current)):
    if not (isinstance(current, (int, float)) and isinstance(value, (int, float))):
      raise ConfigError(f"--config.{key}: expected a {type(current).__name__} like {current!r}, "
                        f"got {raw!r}.")
  if isinstance(value, dict):
    value = ConfigDict(value)
  return value


def split_config_flags(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
  """Splits argv into (`--config` spec, `--config.k=v` overrides, the remaining flags)."""
  spec, overrides, rest = None, [], []
  i = 0
  while i < len(argv):
    a = argv[i]
    if a == "--config" or a.startswith("--config=") or a.startswith("--config."):
      if "=" in a:
        name, _, value = a.partition("=")
      else:
        if i + 1 >= len(argv):
          raise ConfigError(f"{a} needs a value.")
        name, value = a, argv[i + 1]
        i += 1
      if name == "--config":
        spec = value
      else:
        overrides.append((name[len("--config."):], value))
    else:
      rest.append(a)
    i += 1
  return spec, overrides, rest


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config arg `"B/16,batch=1024"` against `defaults`.

  A bare word that names a boolean default sets it True (`"smoke"` for `smoke=False`);
  other bare words fill the first default whose value is a string and that has not been
  set yet (e.g. a variant); `k=v` sets `k`. Unknown keys fail.
  """
  out = dict(defaults)
  if not arg:
    return ml_collections.ConfigDict(out)
  set_keys = set()
  for item in arg.split(","):
    if "=" in item:
      k, _, v = item.partition("=")
      if k not in defaults:
        raise ConfigError(_unknown_key_message(f"arg {k}", [f"arg {d}" for d in defaults]))
      out[k] = _parse_value(v, defaults[k], f"arg {k}") if defaults[k] is not None else v
    elif isinstance(defaults.get(item), bool):
      k = item
      out[k] = True
    else:
      free = [k for k, v in defaults.items() if isinstance(v, str) and k not in set_keys]
      if not free:
        raise ConfigError(f"Config arg {item!r} has no name; write key=value.")
      k = free[0]
      out[k] = item
    set_keys.add(k)
  return ml_collections.ConfigDict(out)
