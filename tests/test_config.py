"""Config loading, overrides and the errors a user sees for bad configs."""

import os

import pytest

from bigvl import config_lib
from conftest import DEMO_CLIP, DEMO_SIGLIP, run_bigvl


@pytest.mark.unit
def test_demo_configs_load_with_defaults():
  c = config_lib.load_config_file(DEMO_SIGLIP)
  assert c.objective.name == "siglip" and c.total_steps > 0
  assert c.optimizer.b2 == 0.999  # From the defaults, not set by the demo.
  clip = config_lib.load_config_file(DEMO_CLIP + ":steps=10")
  assert clip.objective.name == "clip" and clip.total_steps == 10 and clip.model.bias_init is None


@pytest.mark.unit
def test_override_types_and_nested_keys():
  c = config_lib.load_config_file(DEMO_SIGLIP)
  c = config_lib.apply_overrides(c, [("total_steps", "7"), ("optimizer.lr", "1"),
                                     ("model.image.pool", "gap"), ("objective.name", "clip")])
  assert c.total_steps == 7 and c.optimizer.lr == 1.0 and isinstance(c.optimizer.lr, float)
  assert c.model.image.pool == "gap" and c.objective.name == "clip"


@pytest.mark.unit
def test_unknown_override_names_key_and_closest():
  c = config_lib.load_config_file(DEMO_SIGLIP)
  with pytest.raises(config_lib.ConfigError, match="'some_unknown_key'"):
    config_lib.apply_overrides(c, [("some_unknown_key", "1")])
  with pytest.raises(config_lib.ConfigError, match="'optimizer.lrr'.*Did you mean 'optimizer.lr'"):
    config_lib.apply_overrides(c, [("optimizer.lrr", "1")])
  with pytest.raises(config_lib.ConfigError, match="expected a int"):
    config_lib.apply_overrides(c, [("total_steps", "many")])


@pytest.mark.unit
def test_unknown_key_in_config_file_is_an_error(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text("import ml_collections\n"
                  "def get_config(arg=None):\n"
                  "  return ml_collections.ConfigDict(dict(total_step=5))\n")
  with pytest.raises(config_lib.ConfigError, match="'total_step'.*'total_steps'"):
    config_lib.load_config_file(str(path))


@pytest.mark.unit
def test_missing_config_file_names_path():
  with pytest.raises(config_lib.ConfigError, match="not found: 'configs/nope.py'"):
    config_lib.load_config_file("configs/nope.py:B/16")


@pytest.mark.unit
def test_parse_arg():
  a = config_lib.parse_arg("B/16,batch=32", variant="S/16", batch=8)
  assert a.variant == "B/16" and a.batch == 32
  with pytest.raises(config_lib.ConfigError, match="arg batchh"):
    config_lib.parse_arg("batchh=3", batch=8)


@pytest.mark.integration
def test_cli_rejects_unknown_key_before_training(tmp_path):
  workdir = tmp_path / "wd"
  proc = run_bigvl(["--config", DEMO_SIGLIP, "--workdir", str(workdir),
                    "--config.some_unknown_key=1"], timeout=120)
  assert proc.returncode == 2
  assert "some_unknown_key" in proc.stderr
  assert not (workdir / "metrics.jsonl").exists()


@pytest.mark.integration
def test_cli_missing_config_file(tmp_path):
  proc = run_bigvl(["--config", "configs/does_not_exist.py", "--workdir", str(tmp_path)],
                   timeout=120)
  assert proc.returncode == 2
  assert "configs/does_not_exist.py" in proc.stderr and "not found" in proc.stderr


@pytest.mark.unit
def test_objective_name_override_starts_the_new_objective_from_its_defaults():
  """docs/run.md: a new objective.name replaces the block, first whatever its place; the other
  objective.* overrides set the new objective's options, set by the config file or not."""
  from bigvl import objectives
  c = config_lib.load_config_file(DEMO_SIGLIP)
  assert c.objective.chunked is False  # The demo's siglip option, which clip does not take.
  clip = config_lib.apply_overrides(c, [("objective.image_mask_ratio", "0.5"),
                                        ("objective.name", "clip")])
  assert clip.objective.to_dict() == {"name": "clip", "image_mask_ratio": 0.5}
  assert repr(objectives.build(clip.objective)) == "Clip(loss_impl='xla', image_mask_ratio=0.5)"
  same = config_lib.apply_overrides(c, [("objective.name", "siglip")])
  assert same.objective.to_dict() == c.objective.to_dict()
  flip = config_lib.apply_overrides(c, [("objective.image_mask_ratio", "0.25")])
  assert flip.objective.image_mask_ratio == 0.25 and flip.objective.chunked is False
  with pytest.raises(config_lib.ConfigError,
                     match=r"objective 'clip' takes no option 'chunked'.*image_mask_ratio, "
                           r"loss_impl"):
    config_lib.apply_overrides(c, [("objective.chunked", "True"), ("objective.name", "clip")])
  with pytest.raises(config_lib.ConfigError, match=r"Did you mean 'objective.loss_impl'"):
    config_lib.apply_overrides(c, [("objective.loss_imp", "xla")])
  with pytest.raises(config_lib.ConfigError, match=r"expected a float"):
    config_lib.apply_overrides(c, [("objective.image_mask_ratio", "'half'")])
