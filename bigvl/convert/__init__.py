"""Checkpoint conversion: HF transformers (CLIP, SigLIP, ViT, GPT-2), open_clip and big_vision
(.npz) <-> bigvl.

    from bigvl.convert import from_hf, load_converted
    from_hf("hf/clip-vit-base-patch32", "converted/clip-b32")
    model, params = load_converted("converted/clip-b32")

The CLI is tools/convert_checkpoint.py; docs/convert.md shows zero-shot classification.
One module per format (hf_clip, hf_siglip, hf_vit, hf_gpt2, open_clip, big_vision) lists its
tensors' names and layouts; common.py applies them; bigvl_io.py owns the output directory.
"""

from bigvl.convert.api import (from_big_vision_npz, from_hf, from_open_clip, from_workdir, to_hf,
                               to_hf_state, to_big_vision_npz)
from bigvl.convert.big_vision import from_big_vision, to_big_vision
from bigvl.convert.bigvl_io import abstract_params, load_converted, load_meta, preprocess
from bigvl.convert.common import ConversionError

__all__ = ["from_hf", "from_open_clip", "from_workdir", "to_hf", "to_hf_state",
           "from_big_vision", "to_big_vision", "from_big_vision_npz", "to_big_vision_npz",
           "abstract_params", "load_converted", "load_meta", "preprocess", "ConversionError"]
