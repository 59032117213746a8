"""bigvl.compiled_stats: collectives with loop trip counts, dot FLOPs, sliced all-reduces."""

import jax
import jax.numpy as jnp
import pytest

from bigvl import compiled_stats as cs

pytestmark = pytest.mark.unit


def test_dot_flops_count_every_scan_iteration():
  def f(x, w):
    y, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=7)
    return y @ w.T

  x, w = jnp.ones((8, 32)), jnp.ones((32, 32))
  stats = cs.analyse(jax.jit(f).lower(x, w).compile())
  assert stats.dot_flops == 8 * 2 * 8 * 32 * 32  # 7 in the loop + 1 after it.
  assert stats.unknown_trip_counts == 0
  assert not stats.collective_table()
  assert stats.memory["temp_bytes"] >= 0 and stats.memory["argument_bytes"] == (8 + 32) * 32 * 4


def test_convolution_flops():
  im, k = jnp.ones((2, 10, 10, 4)), jnp.ones((3, 3, 4, 16))
  conv = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "VALID",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  stats = cs.analyse(jax.jit(conv).lower(im, k).compile())
  assert stats.dot_flops == 2 * (2 * 8 * 8 * 16) * (3 * 3 * 4)


HLO = """HloModule m, entry_computation_layout={()->f32[8]}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

%slice_it (p0: f32[64,4], p1: s32[]) -> f32[8,4] {
  %p0 = f32[64,4]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %z = s32[] constant(0)
  %b = f32[64,4]{1,0} bitcast(%p0)
  ROOT %ds = f32[8,4]{1,0} dynamic-slice(%b, %p1, %z), dynamic_slice_sizes={8,4}
}

%body (t: (s32[], f32[64,4])) -> (s32[], f32[64,4]) {
  %t = (s32[], f32[64,4]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %g = f32[64,4]{1,0} get-tuple-element(%t), index=1
  %ar = (f32[64,4]{1,0}, f32[2]{0}) all-reduce(%g, %g2), replica_groups={}, to_apply=%add
  %e0 = f32[64,4]{1,0} get-tuple-element(%ar), index=0
  %e1 = f32[2]{0} get-tuple-element(%ar), index=1
  %f = f32[8,4]{1,0} fusion(%e0, %i), kind=kLoop, calls=%slice_it
  %ag = f32[64,4]{1,0} all-gather(%f), dimensions={0}
  ROOT %r = (s32[], f32[64,4]{1,0}) tuple(%i, %ag)
}

%cond (t: (s32[], f32[64,4])) -> pred[] {
  %t = (s32[], f32[64,4]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main () -> f32[8] {
  %init = (s32[], f32[64,4]{1,0}) constant({...})
  %w = (s32[], f32[64,4]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  %w2 = (s32[], f32[64,4]{1,0}) while(%init), condition=%cond, body=%body
  %v = f32[8]{0} parameter(0)
  ROOT %cp = f32[8]{0} collective-permute(%v), source_target_pairs={{0,1},{1,0}}
}
"""


def test_collectives_weighted_by_trip_counts_and_sliced_all_reduces():
  stats = cs.analyse_text(HLO)
  table = stats.collective_table()
  # Body runs 4 times (known) + once (unknown trip count, counted once and reported).
  assert table["all-reduce"] == {"count": 5, "bytes": 5 * (64 * 4 + 2) * 4}
  assert table["all-gather"] == {"count": 5, "bytes": 5 * 64 * 4 * 4}
  assert table["collective-permute"] == {"count": 1, "bytes": 32}
  assert stats.unknown_trip_counts == 1
  # The (64, 4) element is only dynamic-sliced (through a fusion and a bitcast); the (2,)
  # element is not used that way.
  assert stats.all_reduce_sliced_bytes == 5 * 64 * 4 * 4


def test_excess_collectives_and_errors():
  a, b = cs.analyse_text(HLO), cs.analyse_text(HLO.replace("%ag = f32[64,4]{1,0} all-gather(%f), "
                                                           "dimensions={0}", "%ag = f32[64,4]{1,0} "
                                                           "broadcast(%f), dimensions={0}"))
  assert cs.excess_collectives(b, a) == {}
  excess = cs.excess_collectives(a, b)
  assert set(excess) == {"all-gather"} and excess["all-gather"]["ref_count"] == 0
  with pytest.raises(ValueError, match="No ENTRY computation"):
    cs.analyse_text("HloModule empty")


# A bf16-compute layer gradient, as XLA:CPU writes it under a layer scan: all-reduced in f32,
# converted to bf16 by a fusion, then sliced to this device's rows inside the fusion that
# updates the stacked accumulator (a reduce-scatter on TPU/GPU); and one that is not sliced.
HLO_CONVERT = """HloModule m

%conv (p: f32[64,4]) -> bf16[64,4] {
  %p = f32[64,4]{1,0} parameter(0)
  ROOT %c = bf16[64,4]{1,0} convert(%p)
}

%upd (a: f32[3,8,4], b: bf16[64,4], i: s32[]) -> f32[3,8,4] {
  %a = f32[3,8,4]{2,1,0} parameter(0)
  %b = bf16[64,4]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %z = s32[] constant(0)
  %ds = bf16[8,4]{1,0} dynamic-slice(%b, %i, %z), dynamic_slice_sizes={8,4}
  %f = f32[8,4]{1,0} convert(%ds)
  %r = f32[1,8,4]{2,1,0} reshape(%f)
  ROOT %dus = f32[3,8,4]{2,1,0} dynamic-update-slice(%a, %r, %z, %z, %z)
}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

ENTRY %main (g: f32[64,4], h: f32[16], acc: f32[3,8,4], i: s32[]) -> (f32[3,8,4], f32[16]) {
  %g = f32[64,4]{1,0} parameter(0)
  %h = f32[16]{0} parameter(1)
  %acc = f32[3,8,4]{2,1,0} parameter(2)
  %i = s32[] parameter(3)
  %ar = f32[64,4]{1,0} all-reduce(%g), replica_groups={}, to_apply=%add
  %cv = bf16[64,4]{1,0} fusion(%ar), kind=kLoop, calls=%conv
  %up = f32[3,8,4]{2,1,0} fusion(%acc, %cv, %i), kind=kLoop, calls=%upd
  %ar2 = f32[16]{0} all-reduce(%h), replica_groups={}, to_apply=%add
  %n = f32[16]{0} negate(%ar2)
  ROOT %t = (f32[3,8,4]{2,1,0}, f32[16]{0}) tuple(%up, %n)
}
"""


def test_all_reduce_sliced_after_a_converting_fusion():
  stats = cs.analyse_text(HLO_CONVERT)
  assert stats.collective_table()["all-reduce"] == {"count": 2, "bytes": (64 * 4 + 16) * 4}
  assert stats.all_reduce_sliced_bytes == 64 * 4 * 4  # Not the negated (16,) one.
