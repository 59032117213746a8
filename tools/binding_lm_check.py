"""Checks a fast-binding LM (stage 1 of configs/demo/flamingo_binding.py) before the bridges
are trained on it: does it copy a name from an earlier chunk with the same key?

    python tools/binding_lm_check.py --workdir workdirs/binding_lm [--sequences 64]

Prints the top-1 accuracy of the name after a key seen earlier in the sequence (chance
1/5 among the sequence's names; an LM without the skill stays near it), over held-out
sequences of 41 chunks (the 8-shot 5-way prompt's length), overall and by chunk index.
An LM without the skill gives stage 2 nothing to drive; so far stage 2 has stayed near
chance even on an LM at 0.85 here (docs/flamingo.md).
"""

from __future__ import annotations

import numpy as np
import jax
from absl import app, flags

from bigvl import eval as eval_lib
from bigvl.data import sources, transforms
from bigvl.data import tokenizer as tokenizer_lib
from bigvl.data.binding import KEYS, NAMES

# --workdir (the LM stage's) is bigvl.train's flag, which bigvl.eval imports.
flags.mark_flag_as_required("workdir")
flags.DEFINE_integer("sequences", 64, "Held-out keyed sequences to read.")
flags.DEFINE_integer("seed", 99, "Seed of the held-out sequences (training uses 0).")
FLAGS = flags.FLAGS


def name_accuracy(apply, tok, text_len: int, sequences: int, seed: int):
  """(overall, {chunk band: accuracy}) of argmax name predictions after a seen key."""
  src = sources.build(dict(name="binding", inner=dict(name="digits", split="test"), keys=True,
                           length=41, seed=seed, size=sequences))
  # The stage-1 config's own text op: keys in the image marker's place.
  interleave = transforms.build("interleave_text(image='')")
  texts = [interleave(src[i], None)["text"] for i in range(sequences)]
  ids = np.asarray(tok.encode(texts, text_len))
  pred = np.asarray(apply(ids)).argmax(-1)
  names = {tok.piece_id(n) for n in NAMES}
  keys = {tok.piece_id(k) for k in KEYS}
  bands = {"chunks 0-9": [], "10-19": [], "20-29": [], "30-40": []}
  hits = []
  for r in range(sequences):
    seen, chunk = set(), 0
    for t in range(1, ids.shape[1]):
      if ids[r, t] in names and ids[r, t - 1] in keys:
        if ids[r, t - 1] in seen:
          ok = pred[r, t - 1] == ids[r, t]
          hits.append(ok)
          bands[list(bands)[min(chunk // 10, 3)]].append(ok)
        seen.add(ids[r, t - 1])
        chunk += 1
  return float(np.mean(hits)), {k: float(np.mean(v)) for k, v in bands.items() if v}


def main(argv):
  del argv
  config = eval_lib.load_run_config(FLAGS.workdir)
  run, step, state = eval_lib.restore(config, FLAGS.workdir)
  tok = tokenizer_lib.Tokenizer.load(f"{FLAGS.workdir}/tokenizer.model")
  apply = jax.jit(lambda t: run.model.apply({"params": state.params}, t))
  overall, bands = name_accuracy(apply, tok, config.data.text_len, FLAGS.sequences, FLAGS.seed)
  print(f"step {step}: name top-1 after a seen key {overall:.3f} (chance about 0.2); by chunk: "
        + ", ".join(f"{k} {v:.3f}" for k, v in bands.items()))


if __name__ == "__main__":
  app.run(main)
