"""The `classify` evaluator: a classifier head's top-1/top-5 on a labelled split."""

import jax
import numpy as np
import pytest

from bigvl import models, sharding as sh
from bigvl.data import digits
from bigvl.evaluators import EvalContext, build

pytestmark = pytest.mark.unit

PP = "resize(16)|value_range(-1, 1)"


def _ctx(model):
  return EvalContext(model=model, tokenizer=None, text_len=16,
                     mesh=sh.make_mesh(dict(data=-1, fsdp=1, tensor=1)), rules=sh.get_rules("dp"))


def test_top1_and_top5_are_the_heads_argmax_over_the_whole_split():
  model = models.build(dict(name="vit", width=32, depth=1, mlp_dim=64, num_heads=4,
                            patch_size=4, pool="gap", num_classes=10, head_zero_init=False))
  params = model.init(jax.random.PRNGKey(3), np.zeros((1, 16, 16, 1), np.float32))["params"]
  # Batch 100 over the 360 test scans: the last batch is padded, and padding must not count.
  out = build("c", dict(name="classify", data=dict(name="digits", split="test", pp=PP),
                        batch_size=100), _ctx(model)).run(params)
  source = digits.Digits("test")
  images = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float32)
  x = jax.image.resize(images, (len(images), 16, 16, 1), "bilinear") / 127.5 - 1
  labels = np.array([source[i]["label"] for i in range(len(source))])
  logits = np.asarray(model.apply({"params": params}, x)[0])
  top5 = np.argsort(-logits, 1)[:, :5]
  assert set(out) == {"top1", "top5"}
  np.testing.assert_allclose(out["top1"], np.mean(logits.argmax(1) == labels), atol=1 / 360)
  np.testing.assert_allclose(out["top5"], np.mean((top5 == labels[:, None]).any(1)), atol=1 / 360)
  assert 0.0 < out["top1"] < out["top5"] < 1.0  # A random head: far from 0 and 1, apart.


def test_a_model_without_a_head_or_labels_past_it_is_refused():
  tower = dict(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=4, pool="gap")
  data = dict(name="digits", split="test", pp=PP)
  with pytest.raises(ValueError, match="needs a classifier .* num_classes"):
    build("c", dict(name="classify", data=data), _ctx(models.build(dict(name="vit", **tower))))
  small = models.build(dict(name="vit", num_classes=5, **tower))
  params = small.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 1), np.float32))["params"]
  with pytest.raises(ValueError, match="labels 0..9 but the head has 5 classes"):
    build("c", dict(name="classify", data=data), _ctx(small)).run(params)
