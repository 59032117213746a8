"""Loading experiment configs: `path/to/config.py[:arg]`, `--config.key=value` overrides, key checks.

Configs are plain Python files with `get_config(arg: str | None) -> ConfigDict`. The
arg is a short comma-separated language for variants, e.g. `siglip.py:B/16,batch=32768`;
each config decides what its arg means (`parse_arg` helps).

Every key the loop reads has a default in `bigvl.defaults`; a config that sets a
top-level key the loop does not know, or an override of a key that does not exist,
fails with the closest valid key, before anything is built.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
  """A config that cannot be used; the message says what to change."""


def load_config_file(spec: str) -> ConfigDict:
  """Loads `path.py[:arg]` and returns `get_config(arg)` merged onto the loop's defaults."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise ConfigError(f"Config file not found: {path!r} (from --config={spec!r}). "
                      "Give the path of a Python file that defines get_config(), e.g. "
                      "configs/demo/siglip_digits.py.")
  module_name = "bigvl_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  # The config's own directory goes first on sys.path so it may import its siblings.
  sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
  try:
    module_spec.loader.exec_module(module)
  finally:
    sys.path.pop(0)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"Config file {path!r} defines no get_config(arg) function.")
  config = module.get_config(arg or None)
  if not isinstance(config, ConfigDict):
    config = ConfigDict(config)
  return with_defaults(config)


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


def apply_overrides(config: ConfigDict, overrides: list[tuple[str, str]]) -> ConfigDict:
  """Applies `[("model.image.width", "128"), ...]`; values are parsed as Python literals.

  A key that does not exist is an error naming the closest existing key: a typo must
  never silently train with the default.
  """
  config = ConfigDict(config.to_dict())
  for key, raw in overrides:
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
      if not isinstance(node, ConfigDict) or part not in node:
        raise ConfigError(_unknown_key_message(key, flat_keys(config)) +
                          f" (from --config.{key}={raw})")
      if i < len(parts) - 1:
        node = node[part]
    node[parts[-1]] = _parse_value(raw, node[parts[-1]], key)
  return config


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

  Bare words fill the first default whose value is a string and that has not been
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
    else:
      free = [k for k, v in defaults.items() if isinstance(v, str) and k not in set_keys]
      if not free:
        raise ConfigError(f"Config arg {item!r} has no name; write key=value.")
      k = free[0]
      out[k] = item
    set_keys.add(k)
  return ml_collections.ConfigDict(out)
