"""Fault: configs and command lines no run can use fail before compiling, in one line
(issue 18, item 8), and `python -m bigvl.eval` on a damaged newest checkpoint falls back.

A learning rate <= 0 or an empty batch is refused by the CLI with the other flag errors
(`error: ...`, exit 2), naming the key and the fix; a config file that is not valid Python,
raises, or has no get_config is one line naming the file and line. Eval only reads: a
damaged newest checkpoint is named on stderr and the previous one evaluated, nothing moved;
one asked for with --checkpoint is an error naming it (exit 1).
"""

import shutil

import pytest

from bigvl import config_lib
from bigvl import eval as eval_lib
from bigvl import run as run_lib
from bigvl import train
from conftest import DEMO_SIGLIP, call_main, save_run_without_training

pytestmark = pytest.mark.faults


def _one_error_line(capsys):
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


# (override, what the one line must say: the key with its value, and the fix).
BAD_VALUES = [
    ("optimizer.lr=-1e-3", ["config.optimizer.lr=-0.001", "must be a number > 0",
                            "--config.optimizer.lr=1e-3"]),
    ("optimizer.lr=0", ["config.optimizer.lr=0.0", "must be a number > 0"]),
    ("batch_size=0", ["config.batch_size=0", "must be a positive integer",
                      "--config.batch_size=64"]),
    ("batch_size=-8", ["config.batch_size=-8", "must be a positive integer"]),
    ("grad_accum_steps=0", ["config.grad_accum_steps=0", "must be a positive integer"]),
]


@pytest.mark.unit
@pytest.mark.parametrize("override,said", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_cli_refuses_value_before_building(override, said, tmp_path, capsys):
  """`python -m bigvl.train ... --config.<key>=<bad>`: exit 2, one line, nothing written."""
  workdir = tmp_path / "wd"
  rc = call_main(train, ["--config", DEMO_SIGLIP, "--workdir", workdir,
                         f"--config.{override}", "--config.total_steps=2"])
  line = _one_error_line(capsys)
  assert rc == 2, line
  for part in said:
    assert part in line, line
  assert not workdir.exists()


@pytest.mark.unit
@pytest.mark.parametrize("key,value,said", [
    ("optimizer.lr", -1e-3, "config.optimizer.lr=-0.001"),
    ("optimizer.lr", 0.0, "config.optimizer.lr=0.0"),
    ("batch_size", 0, "config.batch_size=0"),
    ("evals", {"zs": dict(name="zeroshot", batch_size=0, data=dict(name="digits", split="test"))},
     "config.evals.zs.batch_size=0"),
])
def test_run_builder_refuses_value_set_in_code(key, value, said, demo_config, tmp_path):
  """The same values set in Python (a notebook, a config file) fail in bigvl.run.build, as one
  ConfigError, before the mesh, the tokenizer or the data are touched."""
  config = demo_config(**{key: value})
  with pytest.raises(config_lib.ConfigError) as e:
    run_lib.build(config, str(tmp_path / "wd"))
  assert said in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "wd").exists()


# (config file text, what the one line must say after the path).
BAD_FILES = {
    "syntax_error": ("import ml_collections\n"
                     "def get_config(arg=None)\n"
                     "  return ml_collections.ConfigDict()\n",
                     ":2: ", "('def get_config(arg=None)'): the config file is not valid Python"),
    "raises_on_import": ("import ml_collections\n"
                         "import not_a_module_of_bigvl\n"
                         "def get_config(arg=None):\n"
                         "  return ml_collections.ConfigDict()\n",
                         ":2: ", "importing the config raised ModuleNotFoundError: No module "
                         "named 'not_a_module_of_bigvl'"),
    "no_get_config": ("import ml_collections\n"
                      "def config(arg=None):\n"
                      "  return ml_collections.ConfigDict()\n",
                      ": ", "defines no get_config(arg) function; a config file must define "
                      "`def get_config(arg=None):`"),
    "get_config_raises": ("import ml_collections\n"
                          "def get_config(arg=None):\n"
                          "  return ml_collections.ConfigDict(dict(total_steps=1 // 0))\n",
                          ":3: ", "get_config(None) raised ZeroDivisionError"),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_cli_names_file_and_line_of_a_broken_config(name, tmp_path, capsys):
  text, line_no, said = BAD_FILES[name]
  path = tmp_path / f"{name}.py"
  path.write_text(text)
  rc = call_main(train, ["--config", path, "--workdir", tmp_path / "wd"])
  line = _one_error_line(capsys)
  assert rc == 2, line
  assert line.startswith(f"error: {path}{line_no}"), line
  assert said in line, line
  assert not (tmp_path / "wd").exists()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A SigLIP demo workdir with checkpoints 1 and 2 (random states; no training)."""
  workdir = tmp_path_factory.mktemp("saved")
  save_run_without_training(config_lib.load_config_file(DEMO_SIGLIP), workdir, steps=(1, 2))
  return workdir


def _damaged_copy(saved, tmp_path, steps=(2,)):
  """A copy of `saved` whose checkpoints `steps` have their largest file cut in half."""
  workdir = tmp_path / "wd"
  shutil.copytree(saved, workdir)
  for step in steps:
    files = sorted((p for p in (workdir / "checkpoints" / str(step)).rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    files[-1].write_bytes(files[-1].read_bytes()[:files[-1].stat().st_size // 2])
  return workdir


@pytest.mark.integration  # Builds a run and evaluates it: about 15 s.
def test_eval_falls_back_from_damaged_newest_checkpoint(saved, tmp_path, capsys):
  workdir = _damaged_copy(saved, tmp_path)
  rc = call_main(eval_lib, ["--workdir", workdir])
  captured = capsys.readouterr()
  err = [line for line in captured.err.splitlines() if line.strip()]
  assert rc == 0, captured.err
  assert len(err) == 1, err
  assert err[0].startswith(f"warning: checkpoint 2 ({workdir}/checkpoints/2) is damaged ("), err
  assert err[0].endswith("; evaluating the previous one, 1."), err
  assert (workdir / "eval_results" / "step_1.json").exists()
  assert "step 1: eval/zeroshot_digits/top1" in captured.out
  # A reader moves nothing: the damaged checkpoint stays for the train loop (or a person).
  assert (workdir / "checkpoints" / "2").is_dir()
  assert not (workdir / "corrupt_checkpoints").exists()


@pytest.mark.integration
def test_eval_of_a_damaged_checkpoint_asked_for_names_it(saved, tmp_path, capsys):
  workdir = _damaged_copy(saved, tmp_path)
  rc = call_main(eval_lib, ["--workdir", workdir, "--checkpoint", "2"])
  line = _one_error_line(capsys)
  assert rc == 1, line
  assert line.startswith(f"error: checkpoint 2 ({workdir}/checkpoints/2) is damaged ("), line
  assert "nothing was evaluated" in line and "available: [1, 2]" in line, line
  assert not (workdir / "eval_results").exists()
  assert (workdir / "checkpoints" / "2").is_dir()


@pytest.mark.integration
def test_eval_when_every_checkpoint_is_damaged(saved, tmp_path, capsys):
  workdir = _damaged_copy(saved, tmp_path, steps=(1, 2))
  rc = call_main(eval_lib, ["--workdir", workdir])
  captured = capsys.readouterr()
  err = [line for line in captured.err.splitlines() if line.strip()]
  assert rc == 1, captured.err
  assert err[0].startswith("warning: checkpoint 2") and len(err) == 2, err
  assert err[1].startswith(f"error: checkpoint 1 ({workdir}/checkpoints/1) is damaged ("), err
  assert "no checkpoint of" in err[1] and "reads back; nothing was evaluated." in err[1], err
