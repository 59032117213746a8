"""HF transformers SiglipModel -> bigvl: the same embeddings and logits.

Tolerance: max |bigvl - HF| <= 1e-5 on the normalised embeddings and on logits_per_image
(t * cos + b), float32. References have random weights (every parameter perturbed) and go
through `save_pretrained` and the converter. SigLIP's sentencepiece model cannot be
downloaded here, so token ids are hand-made in its format: words, EOS (1), padded with EOS to
max_len (SigLIP pads to the full length and pools the last position, without attention mask).
"""

import math

import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import torch  # noqa: E402
import transformers  # noqa: E402

from bigvl import convert  # noqa: E402

TOL = 1e-5
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
EOS = PAD = 1  # SigLIP's "</s>", also its pad token.


def check_parity(hf_config, tmp_path, *, n_images=3, n_texts=4):
  torch.manual_seed(0)
  ref = transformers.SiglipModel(hf_config).eval()
  testing.randomize_(ref)
  with torch.no_grad():  # SigLIP's published initial values instead of HF's zeros.
    ref.logit_scale.fill_(math.log(10.0))
    ref.logit_bias.fill_(-10.0)
  ref.save_pretrained(tmp_path / "hf")
  model, params = convert.load_converted(
      convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "bigvl"), progress=lambda _: None))

  t = hf_config.text_config
  ids = testing.token_ids(n_texts, t.max_position_embeddings, t.vocab_size, eos=EOS, pad=PAD)
  size = hf_config.vision_config.image_size
  images = np.random.default_rng(0).uniform(-1, 1, (n_images, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(images))
  got = testing.two_towers_outputs(model, params, images, ids)

  testing.assert_embeddings_close(got, want, TOL)
  for name, ref_out in (("img_tokens", want.vision_model_output),
                        ("txt_tokens", want.text_model_output)):
    diff = testing.max_abs_diff(got[name], ref_out.last_hidden_state.numpy())
    assert diff <= 10 * TOL, f"{name}: max abs diff {diff:.2e}"
  assert np.ptp(want.logits_per_image.numpy()) > 0.1  # Not a constant: the towers matter.


@pytest.mark.unit
def test_tiny_siglip_matches_hf(tmp_path):
  cfg = transformers.SiglipConfig(
      text_config=dict(TINY, vocab_size=1000, max_position_embeddings=16),
      vision_config=dict(TINY, image_size=32, patch_size=8))
  check_parity(cfg, tmp_path)


@pytest.mark.unit
def test_tiny_siglip_with_patch_remainder_matches_hf(tmp_path):
  # As So400m/14 at 384px: 36 = 2*14 + 8 leftover pixels, which both sides drop.
  cfg = transformers.SiglipConfig(
      text_config=dict(TINY, num_hidden_layers=1, vocab_size=500, max_position_embeddings=8),
      vision_config=dict(TINY, num_hidden_layers=1, image_size=36, patch_size=14))
  check_parity(cfg, tmp_path, n_images=2, n_texts=2)


@pytest.mark.integration
@pytest.mark.slow
def test_siglip_b16_matches_hf(tmp_path):
  # SiglipConfig's defaults are SigLIP B/16 at 224px (203M parameters).
  check_parity(transformers.SiglipConfig(), tmp_path)
