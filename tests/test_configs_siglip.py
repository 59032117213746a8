"""The SigLIP paper configs build HF's SiglipModel of the same name, parameter for parameter.

The model is taken from each config file (configs/siglip/*.py) at each released resolution;
the reference is transformers.SiglipModel built from a SiglipConfig of the released model's
sizes on torch's meta device (nothing allocated). Counts are exact.
"""

import os

import numpy as np
import pytest

from bigvl import config_lib
from bigvl.convert import bigvl_io, testing

testing.import_torch_references()

import torch  # noqa: E402
import transformers  # noqa: E402

pytestmark = pytest.mark.unit
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# google/siglip-* sizes: (hidden, intermediate, layers, heads, patch).
HF = {"b16": (768, 3072, 12, 12, 16), "l16": (1024, 4096, 24, 16, 16),
      "so400m14": (1152, 4304, 27, 16, 14)}


def _bigvl_count(rel: str, res: int) -> tuple[int, dict]:
  config = config_lib.load_config_file(os.path.join(ROOT, rel) + f":res={res}")
  params = bigvl_io.abstract_params(config.model.to_dict(),
                                    dict(image_size=res, text_len=config.data.text_len))
  return sum(int(np.prod(s)) for s in params.values()), config


def _hf_count(name: str, res: int, text_len: int) -> int:
  hidden, mlp, layers, heads, patch = HF[name]
  dims = dict(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
              num_attention_heads=heads)
  with torch.device("meta"):
    model = transformers.SiglipModel(transformers.SiglipConfig(
        text_config=dict(dims, vocab_size=32000, max_position_embeddings=text_len),
        vision_config=dict(dims, patch_size=patch, image_size=res)))
  return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,res", [("b16", 224), ("b16", 256), ("l16", 256), ("l16", 384),
                                      ("so400m14", 224), ("so400m14", 384)])
def test_siglip_config_param_count_equals_hf(name, res):
  ours, config = _bigvl_count(f"configs/siglip/{name}.py", res)
  assert config.data.text_len == 64 and config.batch_size == 32768
  assert ours == _hf_count(name, res, config.data.text_len)
