"""The dense probe: the shapes source's patch labels describe its pixels, the scores are what
they say, and the evaluator reads colour from a ViT's patch tokens and nothing from a model
whose tokens carry no information."""

import jax
import numpy as np
import pytest

from bigvl import models, sharding as sh
from bigvl.data import shapes
from bigvl.evaluators import EvalContext, build
from bigvl.evaluators.dense_probe import dense_scores

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("label", ["shape", "color"])
def test_patch_labels_are_the_pixel_at_each_patch_centre(label):
  src = shapes.Shapes("test", n=20, size=32, patch_labels=4, patch_label=label)
  for i in range(len(src)):
    ex = src[i]
    centres = ex["image"][2::4, 2::4].reshape(-1, 3)     # The pixel at each patch's centre.
    labels = ex["patch_labels"]
    assert labels.shape == (64,) and labels.dtype == np.int32
    np.testing.assert_array_equal(labels == 0, (centres == 0).all(-1))
    if label == "color":
      for k, name in enumerate(src.colors):
        np.testing.assert_array_equal(labels == k + 1, (centres == shapes.PALETTE[name]).all(-1))
    assert labels.max() <= (3 if label == "shape" else len(src.colors))
  assert any(src[i]["patch_labels"].max() > 0 for i in range(len(src)))


def test_bad_patch_label_options_are_explained():
  with pytest.raises(ValueError, match="patch_labels=5.*divides size=32"):
    shapes.Shapes("test", size=32, patch_labels=5)
  with pytest.raises(ValueError, match="patch_label='texture'; valid: shape, color"):
    shapes.Shapes("test", size=32, patch_labels=4, patch_label="texture")


def test_dense_scores():
  labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
  predicted = np.array([0, 0, 0, 1, 1, 0, 2, 2])
  got = dense_scores(predicted, labels)
  assert got["top1"] == pytest.approx(6 / 8)
  assert got["foreground_top1"] == pytest.approx(3 / 4)
  assert got["mean_class_top1"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)


def test_dense_probe_reads_colour_from_patch_tokens_and_nothing_from_constant_ones():
  tower = dict(width=32, depth=1, mlp_dim=64, num_heads=4)
  model = models.build(dict(name="two_towers", image=dict(patch_size=4, pool="map", **tower),
                            text=dict(vocab_size=50, max_len=8, **tower), embed_dim=16))
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32),
                      np.zeros((1, 8), np.int32))["params"]
  ctx = EvalContext(model=model, tokenizer=None, text_len=8,
                    mesh=sh.make_mesh(dict(data=-1, fsdp=1, tensor=1)), rules=sh.get_rules("dp"))
  data = dict(name="shapes", split="test", size=32, patch_labels=4, patch_label="color",
              pp="value_range(-1, 1)")
  probe = build("d", dict(name="dense_probe", data=data, train_examples=120,
                          test_examples=60), ctx)
  got = probe.run(params)
  assert set(got) == {"top1", "foreground_top1", "mean_class_top1"}
  # Random patch tokens are a linear map of the pixels (and some mixing): colour is there.
  assert got["foreground_top1"] > 0.6, got
  # Tokens that are the same for every patch: the probe can only say "background".
  flat = jax.tree.map(lambda x: np.zeros_like(x), params)
  none = probe.run(flat)
  assert none["foreground_top1"] == 0.0 and none["top1"] > 0.5, none
  with pytest.raises(ValueError, match="no `patch_labels`"):
    build("d", dict(name="dense_probe", data=dict(name="shapes", split="test", size=32,
                                                  pp="value_range(-1, 1)")), ctx).run(params)
