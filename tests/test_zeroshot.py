"""The zero-shot evaluator's arithmetic on hand-made embeddings with a known answer."""

import numpy as np
import pytest

from bigvl.evaluators.zeroshot import class_embeddings, topk_accuracy

pytestmark = pytest.mark.unit


def test_topk_accuracy_known_values():
  cls = np.eye(3)  # Class c points along axis c.
  img = np.array([[1.0, 0.1, 0.0],   # -> 0, label 0: right
                  [0.2, 0.9, 0.0],   # -> 1, label 1: right
                  [0.0, 0.3, 0.8],   # -> 2, label 2: right
                  [0.9, 0.5, 0.0],   # -> 0, label 1: wrong (top-2 right)
                  [0.0, 0.6, 0.7]])  # -> 2, label 0: wrong (0 is last)
  labels = np.array([0, 1, 2, 1, 0])
  acc = topk_accuracy(img, labels, cls, ks=(1, 2, 3, 5))
  assert acc == {"top1": 3 / 5, "top2": 4 / 5, "top3": 1.0}  # top5 > classes: not reported.


def test_class_embeddings_average_templates():
  t = np.zeros((2, 2, 2))
  t[0, 0], t[0, 1] = [1, 0], [0, 1]          # Class 0: mean along the diagonal.
  t[1, 0], t[1, 1] = [-1, 0], [-1, 0]
  out = class_embeddings(t)
  np.testing.assert_allclose(out, [[2 ** -0.5, 2 ** -0.5], [-1, 0]], atol=1e-12)
  # An image on the diagonal is closer to class 0 than to either template alone would say.
  assert topk_accuracy(np.array([[1.0, 1.0]]), np.array([0]), out)["top1"] == 1.0
