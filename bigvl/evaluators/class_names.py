"""Named class-name and prompt-template lists for zero-shot evaluation.

An eval config names a list instead of spelling out 1,000 names:

    dict(name="zeroshot", data=dict(name="tfds", dataset="imagenet2012", split="validation",
                                    pp="..."), class_names="imagenet", templates="clip80")

The lists are plain-text files in `bigvl/evaluators/names/` (one entry a line; the README
there gives their source), shipped with the package and read through importlib.resources.

    class_names("imagenet")  -> 1000 names, label order 0..999 ("tench", "goldfish", ...)
    templates("clip80")      -> the 80 CLIP prompt templates ("a bad photo of a {}.", ...)
    templates("clip7")       -> the 7 of them CLIP's authors selected
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Sequence

# Registered list name -> its file in names/. A new list is a file there plus one line here.
CLASS_LISTS = {"imagenet": "imagenet_classes.txt"}
TEMPLATE_LISTS = {"clip80": "clip_templates.txt", "clip7": "clip7_templates.txt"}


@functools.lru_cache(maxsize=None)  # Files of the package: read once per process.
def _read(filename: str) -> tuple[str, ...]:
  text = (importlib.resources.files("bigvl.evaluators") / "names" / filename).read_text("utf-8")
  return tuple(line for line in text.splitlines() if line)


def class_names(name: str) -> tuple[str, ...]:
  """The class names of the registered list `name` (e.g. "imagenet"), in label order."""
  if name not in CLASS_LISTS:
    raise ValueError(f"Unknown class-name list {name!r}; valid: {', '.join(sorted(CLASS_LISTS))} "
                     "(or give the names as a list).")
  return _read(CLASS_LISTS[name])


def templates(name: str) -> tuple[str, ...]:
  """The prompt templates of the registered list `name` (e.g. "clip80"), each with one `{}`."""
  if name not in TEMPLATE_LISTS:
    raise ValueError(f"Unknown template list {name!r}; valid: "
                     f"{', '.join(sorted(TEMPLATE_LISTS))} (or give the templates as a list).")
  return _read(TEMPLATE_LISTS[name])


def as_class_names(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
  """An evaluator's `class_names` option: None stays None (the source's), a string names a
  registered list, a sequence is the names themselves."""
  if value is None:
    return None
  if isinstance(value, str):
    return class_names(value)
  return tuple(value)


def as_templates(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
  """An evaluator's `templates` option, as `as_class_names`; each template must hold a `{}`
  for the class name (one without would give every class the same prompt)."""
  if value is None:
    return None
  out = templates(value) if isinstance(value, str) else tuple(value)
  bad = [t for t in out if "{}" not in t]
  if bad:
    raise ValueError(f"Template {bad[0]!r} has no '{{}}' for the class name; write e.g. "
                     "'a photo of a {}.'.")
  return out
