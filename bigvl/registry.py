"""Name -> factory registries: models, objectives, evaluators, data sources, pp ops.

A config section names what it wants with the key `name` (`config.model.name = "vit"`,
`config.data.train.name = "digits"`, `config.evals.zs.name = "zeroshot"`). A name is
either one that a module registered with `@REGISTRY.register("name")`, or a fully
qualified `"package.module:attribute"`, which is imported on demand. The second form is
what lets a user fork an objective in their own file without touching bigvl.

The five registries live here. Each knows the module that lists its implementations
(the family's package, or `bigvl.data.sources` / `bigvl.data.pp_ops`) and imports it on
the first `get` or `names`: implementation modules import only this module, so there is
no import circle, and `from bigvl.registry import SOURCES; SOURCES.get("digits")` works
from a fresh interpreter. Adding an implementation: `@MODELS.register("my_model")` on the
class, and one import line in that family's list module.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Mapping


class Registry:
  """A named table of factories of one kind (e.g. "objective").

  implementations: the module whose import registers the built-in factories; imported
    on the first `get`/`names` (not on `register`, which those modules call).
  old_keys: {key: hint}: keys that once named the factory in a config (`source`, `type`);
    `build_from_config` answers one with a one-line error naming `name`, plus the hint.
  """

  def __init__(self, kind: str, implementations: str | None = None,
               old_keys: Mapping[str, str] | None = None):
    self.kind = kind
    self.implementations = implementations
    self.old_keys = dict(old_keys or {})
    self._table: dict[str, Callable[..., Any]] = {}
    self._loaded = implementations is None

  def _load(self) -> None:
    if self._loaded:
      return
    self._loaded = True  # Before the import: a `get` while it runs must not re-enter it.
    try:
      importlib.import_module(self.implementations)
    except BaseException:
      self._loaded = False
      raise

  def register(self, name: str):
    """Decorator: registers `fn` under `name`; a second registration of the same name fails."""

    def deco(fn):
      if name in self._table and self._table[name] is not fn:
        raise ValueError(f"{self.kind} {name!r} is already registered by {self._table[name]!r}")
      self._table[name] = fn
      return fn

    return deco

  def names(self) -> list[str]:
    self._load()
    return sorted(self._table)

  def get(self, name: str) -> Callable[..., Any]:
    """Returns the factory registered as `name`, or imports `module:attr`."""
    if not isinstance(name, str):
      raise ValueError(f"A {self.kind} name must be a string, got {name!r}.")
    if ":" not in name:
      self._load()
    if name in self._table:
      return self._table[name]
    if ":" in name:
      module_name, _, attr = name.partition(":")
      try:
        module = importlib.import_module(module_name)
      except ImportError as e:
        raise ValueError(f"{self.kind} {name!r}: cannot import module {module_name!r} ({e}). "
                         "Put it on PYTHONPATH or install it.") from e
      # Importing may have registered it under a plain name too; the attribute wins.
      if not hasattr(module, attr):
        raise ValueError(f"{self.kind} {name!r}: module {module_name!r} has no attribute {attr!r}.")
      return getattr(module, attr)
    close = difflib.get_close_matches(name, self._table, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}; "
                     "or give 'package.module:attribute'.")

  def build(self, name: str, /, **kwargs) -> Any:
    """Calls the factory with `kwargs`, naming any keyword it does not accept.

    `name` is positional-only so that a factory may take a `name` option of its own.
    """
    fn = self.get(name)
    check_kwargs(fn, kwargs, f"{self.kind} {name!r}")
    return fn(**kwargs)

  def config_name(self, cfg, where: str) -> str:
    """The `name` of config section `cfg` (at `where`, e.g. "config.model"), or a one-line
    ValueError: an old key (`source`, `type`) names the fix, a missing one the valid names."""
    for old, hint in self.old_keys.items():
      if old in cfg:
        extra = f" ({hint})" if hint and "name" in cfg else ""
        raise ValueError(f"{where} has {old!r}: the key is 'name' now; write "
                         f"name={cfg[old]!r}{extra}.")
    if "name" not in cfg:
      raise ValueError(f"{where}.name is not set: the {self.kind} to build; valid: "
                       f"{', '.join(self.names())}, or 'package.module:attribute'.")
    return cfg["name"]

  def build_from_config(self, cfg, /, where: str, **extra) -> Any:
    """Builds the factory named by `cfg["name"]` with the other keys of `cfg` and `extra`.

    `cfg`: a dict or ConfigDict (a config section); `where`: its path in the config, for
    errors (see `config_name`); `extra`: keywords the caller adds (e.g. `ctx=`), which a
    key of the config cannot override.
    """
    cfg = config_dict(cfg, where)
    name = self.config_name(cfg, where)
    del cfg["name"]
    clash = sorted(set(cfg) & set(extra))
    if clash:
      raise ValueError(f"{where} sets {clash}, which bigvl fills in itself; remove them.")
    fn = self.get(name)
    kwargs = {**cfg, **extra}
    check_kwargs(fn, kwargs, f"{self.kind} {name!r} ({where})")
    return fn(**kwargs)


def config_dict(cfg, where: str) -> dict[str, Any]:
  """A plain (shallow-copied) dict of a config section: a dict or a ConfigDict."""
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise ValueError(f"{where} must be a dict (a config section), got {cfg!r}.")
  return dict(cfg)


def accepted_kwargs(fn: Callable[..., Any]) -> set[str] | None:
  """Names `fn` accepts as keywords, or None when it takes **kwargs."""
  target = fn.__init__ if inspect.isclass(fn) and not _is_dataclass_like(fn) else fn
  sig = inspect.signature(target)
  if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
    return None
  return {n for n, p in sig.parameters.items()
          if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}


def option_defaults(fn: Callable[..., Any]) -> dict[str, Any] | None:
  """{option: its default (None where it has none)} of the keywords `fn` accepts, or None
  when it takes **kwargs: what a config section may set for it."""
  names = accepted_kwargs(fn)
  if names is None:
    return None
  target = fn.__init__ if inspect.isclass(fn) and not _is_dataclass_like(fn) else fn
  params = inspect.signature(target).parameters
  return {n: (None if params[n].default is inspect.Parameter.empty else params[n].default)
          for n in names}


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], what: str) -> None:
  """Raises a ValueError naming the first keyword `fn` does not take, and its closest valid one."""
  names = accepted_kwargs(fn)
  if names is None:
    return
  for key in kwargs:
    if key not in names:
      close = difflib.get_close_matches(key, names, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"Unknown option {key!r} for {what}.{hint} Valid: {', '.join(sorted(names))}.")


def _is_dataclass_like(cls) -> bool:
  return hasattr(cls, "__dataclass_fields__")


# The five registries. `implementations` is the one module per family that imports every
# module defining one (its list); a new implementation adds a line there.
MODELS = Registry("model", implementations="bigvl.models")
OBJECTIVES = Registry("objective", implementations="bigvl.objectives")
EVALUATORS = Registry("evaluator", implementations="bigvl.evaluators", old_keys={"type": ""})
SOURCES = Registry("data source", implementations="bigvl.data.sources", old_keys={
    "source": "and rename the source's own 'name' option: the TFDS dataset is 'dataset'"})
PP_OPS = Registry("preprocessing op", implementations="bigvl.data.pp_ops")
