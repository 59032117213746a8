"""Bad conversions fail before writing anything, naming the tensor, both shapes and the fix."""

import os

import pytest

from bigvl.convert import testing

testing.import_torch_references()

import torch  # noqa: E402
import transformers  # noqa: E402

from bigvl import convert  # noqa: E402
from bigvl.convert import bigvl_io, hf_clip  # noqa: E402

pytestmark = pytest.mark.unit

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf") / "clip"
  cfg = transformers.CLIPConfig(text_config=dict(TINY, vocab_size=100, max_position_embeddings=8),
                                vision_config=dict(TINY, image_size=16, patch_size=8),
                                projection_dim=24)
  torch.manual_seed(0)
  transformers.CLIPModel(cfg).save_pretrained(path)
  return str(path)


def derived_config(hf_dir):
  return hf_clip.model_config(transformers.CLIPConfig.from_pretrained(hf_dir))[0]


def leftovers(parent):
  return sorted(n for n in os.listdir(parent) if ".tmp-" in n or n == "out")


def test_shape_mismatch_names_first_tensor_and_both_shapes(hf_dir, tmp_path):
  cfg = derived_config(hf_dir)
  cfg["image"]["mlp_dim"] = 48  # The checkpoint's is 64.
  with pytest.raises(convert.ConversionError) as e:
    convert.from_hf(hf_dir, str(tmp_path / "out"), model_config=cfg, progress=lambda _: None)
  msg = str(e.value)
  assert "vision_model.encoder.layers.0.mlp.fc1.weight" in msg  # First in model order.
  assert "img/encoder/block0/mlp/fc1/kernel" in msg
  assert "the checkpoint has (64, 32), the config expects (48, 32)" in msg
  assert "Convert without a model config" in msg
  assert leftovers(tmp_path) == []


def test_depth_mismatch_names_the_missing_tensor(hf_dir, tmp_path):
  cfg = derived_config(hf_dir)
  cfg["text"]["depth"] = 3
  with pytest.raises(convert.ConversionError, match=r"has no tensor "
                     r"text_model\.encoder\.layers\.2\.layer_norm1\.weight, which bigvl parameter "
                     r"txt/encoder/block2/ln1/scale \(shape \(32,\)\) needs"):
    convert.from_hf(hf_dir, str(tmp_path / "out"), model_config=cfg, progress=lambda _: None)
  cfg["text"]["depth"] = 1
  with pytest.raises(convert.ConversionError, match=r"tensor\(s\) the requested model does not "
                     r"use, first: text_model\.encoder\.layers\.1\."):
    convert.from_hf(hf_dir, str(tmp_path / "out"), model_config=cfg, progress=lambda _: None)
  assert leftovers(tmp_path) == []


def test_part_the_format_lacks_is_named(hf_dir, tmp_path):
  cfg = derived_config(hf_dir)
  cfg["image"]["rep_size"] = 32
  with pytest.raises(convert.ConversionError, match=r"bigvl parameter img/pre_logits/bias "
                     r"\(shape \(32,\)\) has no counterpart in the HF CLIPModel checkpoint"):
    convert.from_hf(hf_dir, str(tmp_path / "out"), model_config=cfg, progress=lambda _: None)


def test_existing_output_is_never_overwritten(hf_dir, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  with pytest.raises(FileExistsError, match="already exists; conversion never overwrites"):
    convert.from_hf(hf_dir, str(out), progress=lambda _: None)
  assert (out / "keep.txt").read_text() == "precious"


def test_failure_while_writing_leaves_no_directory(hf_dir, tmp_path, monkeypatch):
  calls = []

  def fail(path, obj):
    calls.append(path)
    raise OSError("disk full")

  monkeypatch.setattr(bigvl_io, "write_json", fail)
  with pytest.raises(OSError, match="disk full"):
    convert.from_hf(hf_dir, str(tmp_path / "out"), progress=lambda _: None)
  assert calls  # It failed after the params were written...
  assert leftovers(tmp_path) == []  # ...and removed them.


def test_not_a_converted_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a converted bigvl checkpoint"):
    convert.load_converted(str(tmp_path))


def test_wrong_model_type(tmp_path):
  (tmp_path / "config.json").write_text('{"model_type": "bert"}')
  with pytest.raises(convert.ConversionError, match="model_type 'bert' is not convertible; "
                     "bigvl converts clip, gpt2, siglip, siglip2, vit"):
    convert.from_hf(str(tmp_path), str(tmp_path / "out"), progress=lambda _: None)


def test_edited_config_json_is_caught_on_load(hf_dir, tmp_path):
  import json
  out = convert.from_hf(hf_dir, str(tmp_path / "ok"), progress=lambda _: None)
  with open(os.path.join(out, "config.json")) as f:
    cfg = json.load(f)
  cfg["text"]["mlp_dim"] = 128
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(cfg, f)
  with pytest.raises(convert.ConversionError, match=r"parameter txt/encoder/block0/mlp/fc1/bias "
                     r"has shape \(64,\), config.json builds \(128,\)"):
    convert.load_converted(out)
