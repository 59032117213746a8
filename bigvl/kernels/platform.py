"""Kernel bodies chosen by the platform being lowered for, not by the host's backend.

`by_platform(*args, cpu=..., cuda=..., tpu=...)` is `jax.lax.platform_dependent`: under
`jax.jit` every branch is traced, and lowering keeps only the branch of the platform the
program is compiled (or `jax.export`ed) for. So exporting for TPU from a CPU host gives the
Mosaic kernel, for "cuda" the Triton kernel, and running on the CPU the Pallas interpreter.
Eager calls (no jit) trace only the branch of the default backend.

Because every branch is traced, a branch must not raise at trace time merely because its
options do not suit *its* platform (Triton wants power-of-two tiles, Mosaic multiples of
128): `unsupported(message, like)` is a branch that traces fine and raises `message` only
if it is lowered (or run eagerly), i.e. only when that platform is actually targeted.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import core as jax_core
from jax.extend.core import Primitive
from jax.interpreters import mlir

# A scalar whose lowering (or eager evaluation) raises: the error surfaces when, and only
# when, the branch holding it is compiled for its platform.
unsupported_p = Primitive("bigvl_unsupported_on_platform")


def _raise(*, message: str):
  raise ValueError(message)


def _lower(ctx, *, message: str):
  del ctx
  raise ValueError(message)


unsupported_p.def_impl(_raise)
unsupported_p.def_abstract_eval(lambda *, message: jax_core.ShapedArray((), jnp.float32))
mlir.register_lowering(unsupported_p, _lower)


def by_platform(*args: Any, cpu: Callable, cuda: Callable, tpu: Callable) -> Any:
  """`per_platform[lowering platform](*args)`; see the module docstring.

  Args:
    *args: arrays (or pytrees of arrays, None allowed) passed to every branch.
    cpu, cuda, tpu: callables of `*args`, each returning the same shapes and dtypes.
      Lowering for any other platform (e.g. rocm) is an error from jax naming the
      platforms that are supported.
  Returns:
    The outputs of the branch of the platform being lowered for.
  """
  return jax.lax.platform_dependent(*args, cpu=cpu, cuda=cuda, tpu=tpu)


def unsupported(message: str, like: Callable) -> Callable:
  """A branch that returns zeros shaped like `like(*args)` and raises ValueError(message)
  when lowered or evaluated eagerly; tracing it (jit, grad, vmap) is fine.

  Args:
    message: what to tell the user (which option the platform cannot take, what to do).
    like: `like(*args)` -> a pytree of `jax.ShapeDtypeStruct`, the branch's outputs.
  """
  def branch(*args):
    poison = unsupported_p.bind(message=message)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype) + poison.astype(s.dtype),
                        like(*args))
  return branch
