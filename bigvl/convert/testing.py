"""Helpers for parity checks: reference models with random weights and realistic inputs.

Used by tests/test_parity_*.py and tests/test_convert_*.py; nothing here downloads anything.
"""

from __future__ import annotations

import sys

import numpy as np

_TORCHVISION_FIX = []  # Keeps the torch.library fragment alive.


def import_torch_references() -> None:
  """Makes `import transformers` / `import open_clip` work next to a mismatched torchvision.

  A torchvision wheel built for CUDA torch, installed next to a CPU torch, cannot load its
  C++ ops, and torchvision 0.28 then fails at import ("operator torchvision::nms does not
  exist") because it registers fake kernels for two ops unconditionally. The references use
  none of torchvision's ops, so declaring the two op schemas is enough; nothing changes when
  torchvision imports cleanly.
  """
  try:
    import torchvision  # noqa: F401
    return
  except RuntimeError as e:
    if "torchvision::" not in str(e):
      raise
  import torch
  for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
    del sys.modules[name]
  lib = torch.library.Library("torchvision", "FRAGMENT")
  for op in ("nms", "qnms"):
    lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  _TORCHVISION_FIX.append(lib)
  import torchvision  # noqa: F401,F811


def randomize_(module, seed: int = 0, scale: float = 0.02) -> None:
  """Adds N(0, scale^2) noise to every parameter of a torch module, in place.

  Initialisers set biases to 0 and LayerNorm scales to 1; a bias or scale converted to the
  wrong place would go unnoticed with those values.
  """
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def token_ids(n: int, length: int, vocab_size: int, *, eos: int, bos: int | None = None,
              pad: int = 0, seed: int = 0, min_words: int = 2) -> np.ndarray:
  """(n, length) int32 ids shaped like a tokenizer's output: [BOS] words EOS pad...

  Word ids avoid BOS/EOS/pad; lengths vary per row; the last row fills the whole length
  (EOS in the last position) so no-padding cases are covered too.
  """
  rng = np.random.default_rng(seed)
  special = {eos, pad} | ({bos} if bos is not None else set())
  out = np.full((n, length), pad, np.int32)
  room = length - 1 - (bos is not None)
  for i in range(n):
    k = room if i == n - 1 else int(rng.integers(min_words, max(min_words + 1, room)))
    words = rng.integers(0, vocab_size, size=k)
    while (bad := np.isin(words, list(special))).any():
      words[bad] = rng.integers(0, vocab_size, size=int(bad.sum()))
    row = ([bos] if bos is not None else []) + words.tolist() + [eos]
    out[i, :len(row)] = row
  return out


def max_abs_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def assert_embeddings_close(got: dict, want, tol: float) -> None:
  """Image/text embeddings and image->text logits of bigvl (`got`) vs an HF output, max abs."""
  for name in ("image_embeds", "text_embeds", "logits_per_image"):
    diff = max_abs_diff(got[name], getattr(want, name).numpy())
    assert diff <= tol, f"{name}: max abs diff {diff:.2e} > {tol}"


def two_towers_outputs(model, params, images_nchw: np.ndarray, ids: np.ndarray) -> dict:
  """A bigvl two-tower model's outputs under the names HF/open_clip give them, as NumPy.

  images_nchw: (n, c, h, w) float32, the references' layout; ids: (m, l) int.
  Returns image_embeds (n, d), text_embeds (m, d), logits_per_image (n, m), and the towers'
  `img_tokens` / `txt_tokens`. Matmuls run at float32 ("highest") precision.
  """
  import jax
  from bigvl.models import two_towers

  @jax.jit
  def run(params, images, ids):
    zimg, ztxt, extras = model.apply({"params": params}, images, ids)
    return dict(image_embeds=zimg, text_embeds=ztxt,
                logits_per_image=two_towers.logits(zimg, ztxt, extras),
                img_tokens=extras["img/tokens"], txt_tokens=extras["txt/tokens"])

  with jax.default_matmul_precision("highest"):
    out = run(params, np.asarray(images_nchw).transpose(0, 2, 3, 1), np.asarray(ids, np.int32))
  return {k: np.asarray(v) for k, v in out.items()}


def random_params(model_cfg, meta, seed: int = 0, scale: float = 0.05) -> dict[str, np.ndarray]:
  """Flat random float32 params of a bigvl model: LayerNorm scales ~1, everything else ~0.

  Drawn in NumPy from `jax.eval_shape` shapes: much faster than compiling `model.init`, and no
  parameter keeps a constant initial value.
  """
  from bigvl.convert import bigvl_io
  rng = np.random.default_rng(seed)
  out = {}
  for path, shape in bigvl_io.abstract_params(model_cfg, meta).items():
    x = rng.normal(0.0, scale, shape).astype(np.float32)
    out[path] = x + 1 if path.endswith("/scale") else x
  return out
