"""Source registry. A source is a random-access sequence of example dicts.

Every source has `__len__`, `__getitem__(i) -> dict`, and may offer `class_names`,
`templates` (prompt templates with one `{}`) and `texts()` (all captions, for training
a tokenizer).
"""

from bigvl.registry import Registry

SOURCES = Registry("data source")

from bigvl.data import digits  # noqa: E402,F401  (registers "digits")
from bigvl.data import ingest  # noqa: E402,F401  (registers "folder")
from bigvl.data import shards  # noqa: E402,F401  (registers "shards")
from bigvl.data import shapes  # noqa: E402,F401  (registers "shapes")
from bigvl.data import tfds_source  # noqa: E402,F401  (registers "tfds")
from bigvl.data import interleaved  # noqa: E402,F401  (registers "interleaved")


def build(source_cfg):
  """Builds the source named by `source_cfg.source` with its `split` and options."""
  cfg = source_cfg.to_dict() if hasattr(source_cfg, "to_dict") else dict(source_cfg)
  if "source" not in cfg:
    raise ValueError(f"Data config {cfg} has no 'source'; valid: {', '.join(SOURCES.names())}.")
  name = cfg.pop("source")
  # Loader-level keys are not the source's.
  for k in ("pp", "batch_size"):
    cfg.pop(k, None)
  return SOURCES.build(name, **cfg)
