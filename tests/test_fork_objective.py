"""DESIGN.md's promise: a new objective is a new function plus a new config, no bigvl change.

The objective module and the config are written here, outside the package, as
docs/objectives.md describes them; the config points at the objective as "module:attribute"
and trains through the same loop.
"""

import pytest
import textwrap

from bigvl import metrics, train
from conftest import DEMO_SIGLIP

pytestmark = pytest.mark.integration

OBJECTIVE = textwrap.dedent('''
    import dataclasses
    import jax.numpy as jnp

    @dataclasses.dataclass(frozen=True)
    class PairCosine:
      """Pulls each image embedding towards its caption's, pushes the batch apart a little."""
      spread: float = 0.1

      def loss(self, model, params, batch, rng, *, train=True):
        zimg, ztxt, _ = model.apply({"params": params}, batch["image"], batch["text"],
                                    train=train, rngs={"dropout": rng})
        pos = jnp.sum(zimg * ztxt, axis=-1).mean()
        spread = jnp.mean(zimg @ ztxt.T)
        return -pos + self.spread * spread, {"cos_pos": pos}
''')

CONFIG = textwrap.dedent(f'''
    from bigvl import config_lib

    def get_config(arg=None):
      c = config_lib.load_config_file({DEMO_SIGLIP!r} + ":steps=40")
      c.objective = dict(name="my_objectives:PairCosine", spread=0.2)
      c.model.bias_init = None
      c.log_every = 10
      c.evals = {{}}
      return c
''')


@pytest.mark.slow
def test_new_objective_trains_without_touching_bigvl(tmp_path, monkeypatch):
  (tmp_path / "my_objectives.py").write_text(OBJECTIVE)
  (tmp_path / "my_config.py").write_text(CONFIG)
  monkeypatch.syspath_prepend(str(tmp_path))
  from bigvl import config_lib
  config = config_lib.load_config_file(str(tmp_path / "my_config.py"))
  train.train_and_evaluate(config, str(tmp_path / "wd"))
  rows = [r for r in metrics.read_jsonl(str(tmp_path / "wd" / "metrics.jsonl"))
          if "train/loss" in r]
  assert [r["step"] for r in rows] == [10, 20, 30, 40]
  assert "train/cos_pos" in rows[-1]
  assert rows[-1]["train/cos_pos"] > rows[0]["train/cos_pos"] + 0.1
  assert rows[-1]["train/loss"] < rows[0]["train/loss"]
