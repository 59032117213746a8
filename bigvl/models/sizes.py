"""Standard transformer sizes (ViT paper, "Scaling ViT", SoViT) and the `"B/16"` variant syntax.

The same table sizes the text towers (CLIP's B/16 text tower is "M", SigLIP So400m's is "So400m").
tests/test_model_sizes.py checks every row against timm's and open_clip's definitions.
"""

from __future__ import annotations

# name -> (width, depth, mlp_dim, num_heads)
SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),   # Not a paper size: unit tests and CPU demos.
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "So400m": (1152, 27, 4304, 16),
}


def parse_variant(variant: str | None) -> dict[str, int]:
  """`"B/16"` -> {width, depth, mlp_dim, num_heads, patch_size}; `"B"` leaves out the patch."""
  if not variant:
    return {}
  size, _, patch = variant.partition("/")
  if size not in SIZES:
    raise ValueError(f"Unknown model size {size!r} in variant {variant!r}; "
                     f"valid sizes: {', '.join(SIZES)}.")
  width, depth, mlp_dim, heads = SIZES[size]
  out = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads)
  if patch:
    if not patch.isdigit() or int(patch) < 1:
      raise ValueError(f"Bad patch size {patch!r} in variant {variant!r}; expected e.g. 'B/16'.")
    out["patch_size"] = int(patch)
  return out


def resolve(variant: str | None, **explicit) -> dict[str, int]:
  """Sizes from `variant`, each overridden by an explicit non-None value; all must end up set."""
  out = parse_variant(variant)
  out.update({k: v for k, v in explicit.items() if v is not None})
  missing = [k for k in explicit if out.get(k) is None]
  if missing:
    raise ValueError(f"Model needs {missing}: give a variant such as 'B/16' or set them.")
  return out
