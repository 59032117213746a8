"""Data sources: SOURCES' list of source modules, and `build` from a data config.

A source is a random-access sequence of example dicts: `__len__`, `__getitem__(i) -> dict`,
and it may offer `class_names`, `templates` (prompt templates with one `{}`) and `texts()`
(all captions, for training a tokenizer). A data config names one with `name` and gives
its options beside: `dict(name="digits", split="train", pp="...")`.

Each source module registers its sources with `@SOURCES.register("name")` (from
bigvl.registry); importing this module registers them all.
"""

from bigvl.registry import SOURCES, config_dict

# The source modules, one line each (a new source file adds its line here).
from bigvl.data import binding  # noqa: E402,F401  (binding)
from bigvl.data import digits  # noqa: E402,F401  (digits)
from bigvl.data import fashion_mnist  # noqa: E402,F401  (fashion_mnist)
from bigvl.data import ingest  # noqa: E402,F401  (folder)
from bigvl.data import interleaved  # noqa: E402,F401  (interleaved)
from bigvl.data import shapes  # noqa: E402,F401  (shapes)
from bigvl.data import shards  # noqa: E402,F401  (shards)
from bigvl.data import synthetic  # noqa: E402,F401  (synthetic)
from bigvl.data import tfds_source  # noqa: E402,F401  (tfds)
from bigvl.data import tuxpaint  # noqa: E402,F401  (tuxpaint)

# Keys of a data config that are the loader's, not the source's.
LOADER_KEYS = ("pp", "batch_size", "weight")


def build(source_cfg, where: str = "config.data.train"):
  """Builds the source named by `source_cfg.name` with its `split` and other options
  (`where`: the config's path, for errors)."""
  cfg = config_dict(source_cfg, where)
  for k in LOADER_KEYS:
    cfg.pop(k, None)
  return SOURCES.build_from_config(cfg, where=where)
