"""open_clip CLIP -> bigvl: the same embeddings and logits as encode_image / encode_text.

Tolerance: max |bigvl - open_clip| <= 1e-5 on the normalised embeddings and on the image
logits (logit_scale.exp() * cos), float32. References have random weights (every parameter
perturbed); their state dict is saved with torch.save and converted from the file. Token ids
come from open_clip's own tokenizer (its BPE vocabulary ships with the package).
"""

import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import open_clip  # noqa: E402
import torch  # noqa: E402

from bigvl import convert  # noqa: E402

TOL = 1e-5
TEXTS = ["a photo of a cat", "a photo of a dog", "", "an astronaut riding a horse on the moon"]
TINY = dict(embed_dim=48,
            vision_cfg=dict(image_size=32, layers=2, width=64, head_width=16, patch_size=8),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=4, layers=2))


def check_parity(ref, tmp_path, image_size, **convert_kw):
  torch.manual_seed(0)
  ref.eval()
  testing.randomize_(ref)
  torch.save(ref.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
  model, params = convert.load_converted(convert.from_open_clip(
      str(tmp_path / "open_clip_pytorch_model.bin"), str(tmp_path / "bigvl"),
      progress=lambda _: None, **convert_kw))

  ids = open_clip.get_tokenizer("ViT-B-32")(TEXTS)
  images = np.random.default_rng(0).standard_normal(
      (3, 3, image_size, image_size)).astype(np.float32)
  with torch.no_grad():
    want = dict(image_embeds=ref.encode_image(torch.from_numpy(images), normalize=True),
                text_embeds=ref.encode_text(ids, normalize=True),
                logits_per_image=ref.get_logits(torch.from_numpy(images), ids)[0])
  got = testing.two_towers_outputs(model, params, images, ids.numpy())
  for name, value in want.items():
    diff = testing.max_abs_diff(got[name], value.numpy())
    assert diff <= TOL, f"{name}: max abs diff {diff:.2e} > {TOL}"
  # The logits carry CLIP's temperature (~14), which scales up any difference in the cosines.
  assert float(ref.logit_scale.detach().exp()) > 10


@pytest.mark.unit
def test_tiny_open_clip_matches(tmp_path):
  check_parity(open_clip.CLIP(**TINY), tmp_path, 32, open_clip_config=TINY)


@pytest.mark.unit
def test_tiny_open_clip_quickgelu_final_ln_after_pool_matches(tmp_path):
  cfg = dict(TINY, quick_gelu=True,
             vision_cfg=dict(TINY["vision_cfg"], layers=1, final_ln_after_pool=True),
             text_cfg=dict(TINY["text_cfg"], layers=1))
  check_parity(open_clip.CLIP(**cfg), tmp_path, 32, open_clip_config=cfg)


@pytest.mark.unit
def test_unsupported_open_clip_options_are_refused(tmp_path):
  cfg = dict(TINY, vision_cfg=dict(TINY["vision_cfg"], pool_type="avg"))
  ref = open_clip.CLIP(**cfg)
  torch.save(ref.state_dict(), tmp_path / "sd.bin")
  with pytest.raises(convert.ConversionError, match=r"vision_cfg.pool_type='avg' is not supported"):
    convert.from_open_clip(str(tmp_path / "sd.bin"), str(tmp_path / "out"), open_clip_config=cfg,
                           progress=lambda _: None)
  assert not (tmp_path / "out").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_open_clip_vit_b32_matches(tmp_path):
  ref = open_clip.create_model("ViT-B-32", pretrained=None)
  check_parity(ref, tmp_path, 224, model_name="ViT-B-32")
