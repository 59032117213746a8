"""One process of the loader resume check in tests/test_loader.py (2 processes, gloo).

    python tests/data_resume_check.py PORT NUM_PROCESSES PROCESS_ID WORKERS MODE WORKDIR

MODE=run: reads batches 1-200 and saves a checkpoint (with the data state) after batch
100; writes the batches' `index` fields to WORKDIR/run-<process>.npy.
MODE=resume: restores the data state of that checkpoint, reads 100 batches, writes
WORKDIR/resume-<process>.npy.
"""

import os
import sys

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bigvl import checkpoint as ckpt_lib  # noqa: E402
from bigvl.data import loader  # noqa: E402

CFG = dict(name="data_sources:IndexSource", n=120, pp="keep('index', 'image')")
BATCH = 8


def main(port, num, pid, workers, mode, workdir):
  if num > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num, process_id=pid)
  kwargs = dict(batch_size=BATCH, seed=5, context={}, workers=workers,
                process_index=jax.process_index(), process_count=jax.process_count())
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  config = ml_collections.ConfigDict(dict(note="loader resume check"))
  state = {"x": np.zeros(2, np.float32)}
  if mode == "run":
    it = loader.train_iterator(CFG, start_step=0, **kwargs)
    out = []
    for step in range(1, 201):
      out.append(next(it).inputs["index"])
      if step == 100:
        ckpt.save(step, state, config, data_state=it.get_state())
  else:
    it = loader.train_iterator(CFG, start_step=0, state=ckpt.restore_data_state(100), **kwargs)
    out = [next(it).inputs["index"] for _ in range(100)]
  ckpt.wait()
  ckpt.close()
  it.close() if hasattr(it, "close") else None
  np.save(os.path.join(workdir, f"{mode}-{jax.process_index()}.npy"), np.stack(out))


if __name__ == "__main__":
  a = sys.argv[1:]
  main(int(a[0]), int(a[1]), int(a[2]), int(a[3]), a[4], a[5])
