"""Name -> factory registries: models, objectives, evaluators, transforms, sources.

A config names what it wants (`config.objective.name = "siglip"`). A name is
either one that a module registered with `@REGISTRY.register("name")`, or a
fully qualified `"package.module:attribute"`, which is imported on demand. The
second form is what lets a user fork an objective in their own file without
touching bigvl.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable


class Registry:
  """A named table of factories of one kind (e.g. "objective")."""

  def __init__(self, kind: str):
    self.kind = kind
    self._table: dict[str, Callable[..., Any]] = {}

  def register(self, name: str):
    """Decorator: registers `fn` under `name`; a second registration of the same name fails."""

    def deco(fn):
      if name in self._table and self._table[name] is not fn:
        raise ValueError(f"{self.kind} {name!r} is already registered by {self._table[name]!r}")
      self._table[name] = fn
      return fn

    return deco

  def names(self) -> list[str]:
    return sorted(self._table)

  def get(self, name: str) -> Callable[..., Any]:
    """Returns the factory registered as `name`, or imports `module:attr`."""
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


def accepted_kwargs(fn: Callable[..., Any]) -> set[str] | None:
  """Names `fn` accepts as keywords, or None when it takes **kwargs."""
  target = fn.__init__ if inspect.isclass(fn) and not _is_dataclass_like(fn) else fn
  sig = inspect.signature(target)
  if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
    return None
  return {n for n, p in sig.parameters.items()
          if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}


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
