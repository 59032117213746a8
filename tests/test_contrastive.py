"""CLIP and SigLIP losses against NumPy float64 implementations written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvl.objectives.contrastive import sigmoid_loss, softmax_loss

pytestmark = pytest.mark.unit


def np_softmax_loss(zimg, ztxt, t):
  logits = t * zimg @ ztxt.T
  n = len(logits)

  def ce_rows(l):
    m = l.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(l - m).sum(axis=1))
    return np.mean(lse - l[np.arange(n), np.arange(n)])

  return 0.5 * (ce_rows(logits) + ce_rows(logits.T))


def np_sigmoid_loss(zimg, ztxt, t, b):
  logits = t * zimg @ ztxt.T + b
  n = len(logits)
  total = 0.0
  for i in range(n):
    for j in range(n):
      z = 1.0 if i == j else -1.0
      total += np.log1p(np.exp(-z * logits[i, j]))  # -log sigmoid(z * logit)
  return total / n


def _embeddings(n, d, seed):
  rng = np.random.default_rng(seed)
  x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  y[: n // 2] = 0.7 * x[: n // 2] + 0.3 * y[: n // 2]  # Some pairs similar, some not.
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  return x, y


@pytest.mark.parametrize("n,d,t", [(8, 16, 10.0), (33, 7, 1 / 0.07), (1, 4, 3.0)])
def test_softmax_loss_matches_numpy(n, d, t):
  x, y = _embeddings(n, d, seed=n)
  want = np_softmax_loss(x, y, t)
  with jax.enable_x64(True):
    got = float(softmax_loss(jnp.asarray(x), jnp.asarray(y), jnp.float64(t)))
  assert abs(got - want) < 1e-6
  got32 = float(softmax_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), t))
  assert abs(got32 - want) < 1e-5 * max(1.0, abs(want))


@pytest.mark.parametrize("n,d,t,b", [(8, 16, 10.0, -10.0), (33, 7, 5.0, 2.0), (1, 4, 3.0, 0.0)])
def test_sigmoid_loss_matches_numpy(n, d, t, b):
  x, y = _embeddings(n, d, seed=n + 1)
  want = np_sigmoid_loss(x, y, t, b)
  with jax.enable_x64(True):
    got = float(sigmoid_loss(jnp.asarray(x), jnp.asarray(y), jnp.float64(t), jnp.float64(b)))
  assert abs(got - want) < 1e-6
  got32 = float(sigmoid_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), t, b))
  assert abs(got32 - want) < 1e-5 * max(1.0, abs(want))


def test_losses_prefer_matching_pairs():
  x, _ = _embeddings(16, 8, seed=3)
  shuffled = x[np.random.default_rng(0).permutation(16)]
  assert softmax_loss(x, x, 10.0) < softmax_loss(x, shuffled, 10.0)
  assert sigmoid_loss(x, x, 10.0, -5.0) < sigmoid_loss(x, shuffled, 10.0, -5.0)
