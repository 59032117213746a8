"""tools/convert_checkpoint.py: the thin CLI over bigvl.convert, run in-process."""

import json
import os

import pytest

from bigvl.convert import testing
from conftest import load_tool

testing.import_torch_references()

import torch  # noqa: E402
import transformers  # noqa: E402

pytestmark = pytest.mark.unit

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def cli():
  return load_tool("convert_checkpoint")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf") / "siglip"
  cfg = transformers.SiglipConfig(text_config=dict(TINY, vocab_size=100,
                                                   max_position_embeddings=8),
                                  vision_config=dict(TINY, image_size=16, patch_size=8))
  torch.manual_seed(0)
  transformers.SiglipModel(cfg).save_pretrained(path)
  return str(path)


def test_hf_to_bigvl_and_back(cli, hf_dir, tmp_path, capsys):
  out = str(tmp_path / "bigvl")
  assert cli.main(["hf", hf_dir, out]) == 0
  log = capsys.readouterr().out
  assert "reading" in log and "converting" in log and "done:" in log
  assert sorted(os.listdir(out)) == ["config.json", "meta.json", "params"]
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["image"]["pool"] == "map"

  assert cli.main(["to_hf", out, str(tmp_path / "hf")]) == 0
  model = transformers.SiglipModel.from_pretrained(str(tmp_path / "hf"))
  assert model.config.vision_config.image_size == 16


def test_errors_are_one_line_and_exit_1(cli, hf_dir, tmp_path, capsys):
  cfg = {"name": "two_towers", "image": {"variant": "mu/8", "pool": "map"},
         "text": {"variant": "mu", "vocab_size": 100, "max_len": 8, "num_classes": 32},
         "bias_init": -10.0}
  assert cli.main(["hf", hf_dir, str(tmp_path / "out"), "--model_config", json.dumps(cfg)]) == 1
  err = capsys.readouterr().err
  # "mu" has the checkpoint's width (32) but an MLP of 128 where the checkpoint has 64.
  assert err.startswith("error: Shape mismatch at vision_model.encoder.layers.0.mlp.fc1.weight "
                        "(bigvl img/encoder/block0/mlp/fc1/kernel): the checkpoint has (64, 32), "
                        "the config expects (128, 32).")
  assert len(err.strip().splitlines()) == 1
  assert "Traceback" not in err
  assert not (tmp_path / "out").exists()
