"""The README is real: its example config trains, and every command and `--config.*` override it
shows runs as written (issue 18, item 9).

The commands (`python -m bigvl.*`, `python tools/*.py`, in code blocks and inline) are found in
README.md itself, so a command added there is tested here without a change to this file. They
run in this process, in README order, from a scratch repository root (`configs/` linked in):
`python -m bigvl.train` through `train.main` up to building the run, where the training is
replaced by what a finished run leaves (config.json, the tokenizer, the checkpoints it keeps,
holding random states of its shapes; `init_from` loaded), so nothing is compiled for it;
`python -m bigvl.eval` and the tools run whole. Placeholders (`...`, `NODE0`, `N`,
`gs://bucket/run`, ...) get the values of `PLACEHOLDERS`. The trainings themselves are the
demo tests' (`pytest -m demo`) and `test_readme_example_config_trains`.
"""

import os
import re
import runpy
import shlex
import sys
import traceback

import pytest

from bigvl import checkpoint, config_lib, init_from, metrics, train
from bigvl import eval as eval_lib
from conftest import REPO, call_main, missing_real_data, save_run_without_training

pytestmark = pytest.mark.integration

README = open(os.path.join(REPO, "README.md")).read()
DEMO = "configs/demo/siglip_digits.py"
QUICK_START = f"python -m bigvl.train --config {DEMO} --workdir workdirs/siglip_digits"

# What the README's placeholders stand for here, in this order. `--config ...` is any config;
# a bare `...` is the rest of a train command. The gs:// workdir and a cluster's coordinator
# are tested elsewhere (tests/test_cloud_workdir.py, tests/test_scale.py); the flags that name
# them must parse here.
PLACEHOLDERS = [
    ("--config ...", f"--config {DEMO}"),
    ("python -m bigvl.train ... ", f"python -m bigvl.train --config {DEMO} --workdir {{new}} "),
    ("gs://bucket/run", "{new}"),
    ("/shared/run", "{new}"),
    ("NODE0:1234", "127.0.0.1:1234"),
    ("--num_processes=N", "--num_processes=2"),
    ("--process_id=I", "--process_id=0"),
    ("OTHER_WORKDIR", "workdirs/siglip_digits"),  # The quick start's run.
    ("/raw/mine/", "raw/mine/"),
    ("/data/mine", "data/mine"),
]


def _code_spans(text):
  """Inline code spans outside fenced blocks, whitespace collapsed (a span may wrap lines)."""
  text = re.sub(r"```.*?```", "", text, flags=re.S)
  return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text)]


def readme_commands() -> list[str]:
  """Every `python -m bigvl.*` / `python tools/*` command of the README, in order: the lines of
  its bash/sh blocks (continuations joined, `&&` chains split, comments dropped) and its
  inline spans (an environment prefix such as XLA_FLAGS=... dropped); `[--opt v]` gives the
  command without and with it."""
  found = []
  for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S):
    if lang in ("bash", "sh"):
      for line in body.replace("\\\n", " ").splitlines():
        found.extend(part.split("#")[0] for part in line.split("&&"))
  found.extend(s[s.index("python "):] for s in _code_spans(README) if "python " in s)
  out = []
  for command in (" ".join(c.split()) for c in found):
    if not re.match(r"python (-m bigvl\.|tools/)", command):
      continue
    optional = re.search(r" \[(.*?)\]", command)
    if optional:
      bare = command.replace(optional.group(0), "")
      out.extend([bare, bare + " " + optional.group(1)])
    else:
      out.append(command)
  return out


def readme_overrides() -> list[str]:
  """Every `--config.<key>=<value>` the README shows (not the `--config.*` wildcard)."""
  return [s for s in _code_spans(README) if re.fullmatch(r"--config\.[\w.]+=\S+", s)]


def readme_config_specs() -> list[str]:
  """Every inline `--config <file>[:arg]` of the README."""
  return [s for s in _code_spans(README) if re.fullmatch(r"--config \S+\.py\S*", s)]


def test_readme_shows_the_commands_this_file_expects():
  """The discovery above finds the README's commands (a changed README format must not make
  the tests below check nothing)."""
  commands = readme_commands()
  assert QUICK_START in commands
  assert "python -m bigvl.eval --workdir workdirs/siglip_digits --checkpoint 1000" in commands
  assert any(c.startswith("python tools/convert_checkpoint.py hf ") for c in commands)
  assert any("--coordinator_address=127.0.0.1:1234" in c for c in commands)
  assert "--config.objective.name=clip" in readme_overrides()
  assert readme_config_specs() == [f"--config {DEMO}:steps=200,batch=32"]


class Player:
  """Runs README commands from a scratch repository root; `runs` records each train command's
  built run (what `train.train_and_evaluate` was given) and `distributed` its multi-process
  flags."""

  def __init__(self, root):
    self.root, self.runs, self.distributed, self.count = root, [], [], 0
    os.symlink(os.path.join(REPO, "configs"), root / "configs")

  def _record_distributed(self):
    flags = train.FLAGS
    self.distributed.append(dict(distributed=flags.distributed,
                                 coordinator_address=flags.coordinator_address,
                                 num_processes=flags.num_processes,
                                 process_id=flags.process_id))

  def _as_if_trained(self, config, workdir):
    """What a finished `train_and_evaluate(config, workdir)` leaves, without training: the run
    built, config.json, the tokenizer, and init_from's params loaded. A workdir the README
    names also gets the checkpoints the run keeps (random states of its shapes; none added
    where it has some: a rerun resumes), for the commands that read it back."""
    workdir = self.root / workdir
    config = config_lib.with_defaults(config)
    every, total = config.checkpoint_every, config.total_steps
    steps = sorted({*range(every, total + 1, every), total} if every else {total})
    have = (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir())
    named = f" {workdir.relative_to(self.root)}" in README
    run, state = save_run_without_training(
        config, workdir, steps[-config.keep_checkpoints:] if named and not have else ())
    report = None
    if init_from.init_sources(run.config):
      _, report = init_from.params_from(run.config, state.params)
      assert report["loaded"], f"init_from loaded nothing into {workdir}"
    self.runs.append(dict(workdir=workdir, run=run, init_report=report))
    return {}

  def argv(self, command: str) -> list[str]:
    for placeholder, value in PLACEHOLDERS:
      if placeholder in command:
        self.count += 1
        command = command.replace(placeholder, value.format(new=f"workdirs/run{self.count}"))
    return shlex.split(command)

  def play(self, command: str) -> int:
    """Runs `command` from the scratch root (the loop's training replaced, see above);
    returns its exit status. Its output goes to `self.out` / `self.err`."""
    argv = self.argv(command)
    assert argv[0] == "python", command
    capture = _Capture()
    try:
      with pytest.MonkeyPatch.context() as monkeypatch, capture:
        monkeypatch.chdir(self.root)
        monkeypatch.setattr(train, "train_and_evaluate", self._as_if_trained)
        monkeypatch.setattr(train, "init_distributed", self._record_distributed)
        return self._run(argv)
    finally:
      self.out, self.err = capture.out, capture.err

  def _run(self, argv: list[str]) -> int:
    if argv[1] == "-m":
      module = {"bigvl.train": train, "bigvl.eval": eval_lib}[argv[2]]
      if len(argv) == 3:  # A mention of the module (`python -m bigvl.eval`), not a run.
        return 0 if callable(module.main) else 1
      return call_main(module, argv[3:])
    script = os.path.join(REPO, argv[1])
    old_argv = sys.argv
    sys.argv = [script, *argv[2:]]
    try:
      runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
      return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
      sys.argv = old_argv
    return 0


def _make_inputs(root):
  """What the README's commands read that no earlier command makes: an image folder with
  captions (`/raw/mine/`) and an HF CLIP directory (`path/to/clip-vit-base-patch32`)."""
  from bigvl.convert import testing
  from test_make_dataset import make_folder

  images, captions, _, _ = make_folder(root / "raw" / "mine")
  assert images == str(root / "raw" / "mine" / "images")
  assert captions == str(root / "raw" / "mine" / "captions.jsonl")
  testing.import_torch_references()
  import torch
  import transformers
  tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
  torch.manual_seed(0)
  transformers.CLIPModel(transformers.CLIPConfig(
      text_config=tiny, projection_dim=16, vision_config=dict(tiny, image_size=32, patch_size=8),
  )).save_pretrained(root / "path" / "to" / "clip-vit-base-patch32")


@pytest.fixture(scope="module")
def played(tmp_path_factory):
  """Every README command, played in order; {command: (exit status, stdout, stderr)}."""
  root = tmp_path_factory.mktemp("repo")
  _make_inputs(root)
  player = Player(root)
  results = {}
  for command in readme_commands():
    try:
      rc = player.play(command)
    except Exception:  # Reported with the command by the test below, not as a fixture error.
      rc, player.err = "an exception", player.err + traceback.format_exc()
    results[command] = (rc, player.out, player.err)
  return player, results


class _Capture:
  """Captures sys.stdout/sys.stderr of a block (a command's output, shown when it fails)."""

  def __enter__(self):
    import io
    self.saved = sys.stdout, sys.stderr
    self.out = self.err = ""
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    return self

  def __exit__(self, *exc):
    self.out, self.err = sys.stdout.getvalue(), sys.stderr.getvalue()
    sys.stdout, sys.stderr = self.saved


@pytest.mark.slow  # The played README (~45 s of shared setup): CI's slow run.
def test_every_readme_command_runs_as_written(played):
  player, results = played
  failed = {c: r for c, r in results.items() if r[0] != 0 and not missing_real_data(c)}
  assert not failed, "\n\n".join(f"{c}\n-> exit {rc}\n{out[-2000:]}\n{err[-2000:]}"
                                 for c, (rc, out, err) in failed.items())
  root = player.root
  # Each train command built its run into its workdir, as a finished run would leave it.
  built = {str(r["workdir"].relative_to(root)) for r in player.runs}
  assert {"workdirs/siglip_digits", "workdirs/cappa_shapes", "workdirs/coca_shapes",
          "workdirs/mae_digits", "workdirs/digits_lm", "workdirs/flamingo_digits"} <= built
  for r in player.runs:
    assert (r["workdir"] / "config.json").exists()
  # The Flamingo command loads the LM and the SigLIP image tower it names.
  flamingo = next(r for r in player.runs if r["workdir"].name == "flamingo_digits")
  assert any(k.startswith("lm/") for k in flamingo["init_report"]["loaded"])
  assert any(k.startswith("vision/") for k in flamingo["init_report"]["loaded"])
  # The eval commands evaluated what they name; the tools wrote what they say.
  assert (root / "workdirs/siglip_digits/eval_results/step_1500.json").exists()
  assert (root / "workdirs/siglip_digits/eval_results/step_1000.json").exists()
  assert (root / "workdirs/mae_digits/eval_results/random_init.json").exists()
  assert (root / "recon.png").exists()
  assert (root / "converted/clip-b32/params").is_dir()
  assert (root / "data/mine/spm.model").exists()
  # The multi-process commands' flags reach the loop as written.
  assert dict(distributed=True, coordinator_address=None, num_processes=None,
              process_id=None) in player.distributed
  assert dict(distributed=False, coordinator_address="127.0.0.1:1234", num_processes=2,
              process_id=0) in player.distributed
  checkpoint.check_location("gs://bucket/run")  # Its workdir is one orbax can write to.


@pytest.mark.parametrize("variant", [
    "--process_id=1",  # "... and the same with `--process_id=1`".
])
@pytest.mark.slow  # The played README (~45 s of shared setup): CI's slow run.
def test_readme_command_variants(played, variant):
  player, _ = played
  base = next(c for c in readme_commands() if "--process_id=0" in c)
  assert f"`{variant}`" in README
  assert player.play(base.replace("--process_id=0", variant)) == 0, player.err
  assert player.distributed[-1] == dict(distributed=False, coordinator_address="127.0.0.1:1234",
                                        num_processes=2, process_id=1)


@pytest.mark.slow  # The played README (~45 s of shared setup): CI's slow run.
@pytest.mark.parametrize("override", readme_overrides())
def test_readme_override_builds_on_the_quick_start(played, override):
  """`--config.total_steps=3000`, `--config.objective.name=clip`, ...: each on the quick-start
  command, in a new workdir, builds its run with the value set."""
  player, _ = played
  key = override[len("--config."):].partition("=")[0]
  workdir = f"workdirs/override_{key}"
  command = QUICK_START.replace("workdirs/siglip_digits", workdir) + " " + override
  assert player.play(command) == 0, player.err
  built = player.runs[-1]
  assert built["workdir"] == player.root / workdir
  raw = player.argv(override)[0].partition("=")[2]  # Its placeholder replaced.
  want = config_lib.apply_overrides(config_lib.load_config_file(DEMO), [(key, raw)])
  got = built["run"].config
  for part in key.split("."):
    want, got = want[part], got[part]
  assert got == want
  if key == "objective.name":  # The demo's siglip options (chunked, ...) are gone with it.
    assert built["run"].config.objective.to_dict() == {"name": raw}
    assert type(built["run"].objective).__name__.lower() == raw
  if key == "init_from":
    assert built["init_report"]["loaded"] and not built["init_report"]["mismatched"]


@pytest.mark.slow  # The played README (~45 s of shared setup): CI's slow run.
@pytest.mark.parametrize("spec", readme_config_specs())
def test_readme_config_arg_builds(played, spec):
  """`--config configs/demo/siglip_digits.py:steps=200,batch=32` sets what its arg says."""
  player, _ = played
  assert player.play(f"python -m bigvl.train {spec} --workdir workdirs/config_arg") == 0, \
      player.err
  config = player.runs[-1]["run"].config
  assert (config.total_steps, config.batch_size) == (200, 32)


@pytest.mark.slow  # Over 10 s on 2 cores: the default suite stays under 10 minutes.
def test_readme_example_config_trains(tmp_path):
  code = re.search(r"```python\n(# configs/my_clip.py\n.*?)```", README, re.S).group(1)
  path = tmp_path / "my_clip.py"
  path.write_text(code)
  config = config_lib.apply_overrides(config_lib.load_config_file(f"{path}"),
                                      [("total_steps", "20"), ("log_every", "10")])
  last = train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert 0.0 <= last["eval/zeroshot/top1"] <= 1.0
  rows = metrics.read_jsonl(str(tmp_path / "wd" / "metrics.jsonl"))
  assert [r["step"] for r in rows if "train/loss" in r] == [10, 20]


@pytest.mark.slow  # The played README (~45 s of shared setup): CI's slow run.
def test_readme_own_data_snippet_reads_the_commands_output(played):
  """The "Your own data" section's config snippet, on what its two commands wrote."""
  import ml_collections

  from bigvl.data import loader, tokenizer as tok_lib

  player, _ = played
  section = README.split("## Your own data")[1].split("\n## ")[0]
  snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  snippet = snippet.replace("/data/mine", str(player.root / "data" / "mine"))
  config = ml_collections.ConfigDict({"data": {"train": {}, "tokenizer": ""}})
  exec(snippet, {"config": config})
  tok = tok_lib.Tokenizer.load(config.data.tokenizer)
  batch = loader.train_dataset(config.data.train, batch_size=4, seed=0,
                               context=dict(tokenizer=tok, text_len=16))[0].inputs
  assert batch["image"].shape == (4, 224, 224, 3) and batch["text"].shape == (4, 16)
