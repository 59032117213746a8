"""Reading PyTorch-world weights (safetensors, torch pickles, HF sharded dirs) as NumPy, and writing them.

Floating tensors are read as float32 (bigvl keeps float32 params; fp16/bf16 upcast exactly).
torch is imported only for torch pickles and bf16 safetensors.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import numpy as np

# Weight files of a HF model directory, in order of preference.
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def _to_numpy(t) -> np.ndarray:
  import torch
  if t.is_floating_point():
    t = t.to(torch.float32)
  return t.detach().cpu().numpy()


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open
  try:
    with safe_open(path, framework="numpy") as f:
      return {k: _float32(f.get_tensor(k)) for k in f.keys()}
  except (TypeError, ValueError):  # A dtype NumPy lacks (bf16): go through torch.
    with safe_open(path, framework="pt") as f:
      return {k: _to_numpy(f.get_tensor(k)) for k in f.keys()}


def _float32(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x


def _read_torch(path: str) -> dict[str, np.ndarray]:
  import torch
  obj = torch.load(path, map_location="cpu", weights_only=True)
  # Training checkpoints (open_clip's epoch_N.pt) wrap the weights, DDP prefixes "module.".
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  out = {}
  for k, v in obj.items():
    if not isinstance(v, torch.Tensor):
      continue  # OpenAI's JIT archives carry ints such as `input_resolution`.
    out[k[len("module."):] if k.startswith("module.") else k] = _to_numpy(v)
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state dict from a .safetensors / .bin / .pt / .pth file or a HF sharding index .json."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Checkpoint file {path} does not exist.")
  if path.endswith(".index.json"):
    with open(path) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for shard in shards:
      out.update(read_state_dict(os.path.join(os.path.dirname(path), shard)))
    return out
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  return _read_torch(path)


def find_hf_weights(hf_dir: str) -> str:
  """The weights file of a HF model directory."""
  for name in HF_WEIGHT_FILES:
    path = os.path.join(hf_dir, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"{hf_dir} holds none of {', '.join(HF_WEIGHT_FILES)}; give the "
                          "directory that `save_pretrained` wrote (with config.json).")


def write_safetensors(path: str, state: Mapping[str, np.ndarray],
                      progress: Callable[[str], None] = print) -> None:
  """Writes `state` as a safetensors file HF transformers loads (format metadata "pt")."""
  from safetensors.numpy import save_file
  progress(f"writing {len(state)} tensors to {path}")
  save_file({k: np.asarray(v, order="C") for k, v in state.items()}, path,
            metadata={"format": "pt"})
