"""HF transformers CLIPModel -> bigvl: the same embeddings and logits.

Tolerance: max |bigvl - HF| <= 1e-5 on the normalised embeddings and on logits_per_image,
float32 everywhere. References have random weights (every parameter perturbed, so no bias
is a constant) and are written with `save_pretrained`, then converted from that directory
exactly as a user would. Token ids come from CLIP's BPE tokenizer (shipped with open_clip).
"""

import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import open_clip  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bigvl import convert  # noqa: E402

TOL = 1e-5
TEXTS = ["a photo of a cat", "a diagram of a ViT", "",
         "the quick brown fox jumps over the lazy dog " * 3]
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def clip_token_ids(eos_padded: bool = False) -> np.ndarray:
  """(4, 77) ids from CLIP's tokenizer: BOS, words, EOS, padding (0s, or EOS as HF pads)."""
  ids = open_clip.get_tokenizer("ViT-B-32")(TEXTS).numpy().astype(np.int32)
  if eos_padded:
    ids[ids == 0] = 49407
  return ids


def check_parity(hf_config, tmp_path, ids, *, tokens: bool = True):
  torch.manual_seed(0)
  ref = transformers.CLIPModel(hf_config).eval()
  testing.randomize_(ref)
  ref.save_pretrained(tmp_path / "hf")
  model, params = convert.load_converted(
      convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "bigvl"), progress=lambda _: None))

  size = hf_config.vision_config.image_size
  images = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    # No attention_mask: with the causal mask, padding never reaches the pooled EOS token.
    want = ref(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(images))
  got = testing.two_towers_outputs(model, params, images, ids)

  testing.assert_embeddings_close(got, want, TOL)
  if tokens:  # HF's vision last_hidden_state is before post_layernorm: bigvl's norm_pooled.
    for name, ref_out in (("img_tokens", want.vision_model_output),
                          ("txt_tokens", want.text_model_output)):
      diff = testing.max_abs_diff(got[name], ref_out.last_hidden_state.numpy())
      assert diff <= 10 * TOL, f"{name}: max abs diff {diff:.2e}"  # Un-normalised, |x| ~ 5.
  # The logits carry CLIP's temperature (~14), which scales up any difference in the cosines.
  assert float(ref.logit_scale.detach().exp()) > 10


def tiny_config(depth=2, **text_overrides):
  tiny = dict(TINY, num_hidden_layers=depth)
  return transformers.CLIPConfig(text_config=dict(tiny, **text_overrides),
                                 vision_config=dict(tiny, image_size=32, patch_size=8),
                                 projection_dim=48)


@pytest.mark.unit
def test_tiny_clip_matches_hf(tmp_path):
  check_parity(tiny_config(), tmp_path, clip_token_ids(eos_padded=True))


@pytest.mark.unit
def test_tiny_clip_legacy_eos_config_pools_at_highest_id(tmp_path):
  # Configs from before transformers PR #24773 say eos_token_id=2: HF then pools at argmax(ids).
  cfg = tiny_config(depth=1, eos_token_id=2)
  check_parity(cfg, tmp_path, clip_token_ids())
  assert convert.load_meta(str(tmp_path / "bigvl"))["text_len"] == 77
  import json
  with open(tmp_path / "bigvl" / "config.json") as f:
    assert json.load(f)["text"]["pool"] == "argmax"


@pytest.mark.integration
@pytest.mark.slow
def test_clip_b32_matches_hf(tmp_path):
  # CLIPConfig's defaults are OpenAI's ViT-B/32 (151M parameters).
  check_parity(transformers.CLIPConfig(), tmp_path, clip_token_ids(eos_padded=True))
