"""BLEU and CIDEr-D of bigvl.evaluators.caption_metrics against coco-caption's own scorers.

Reference numbers come from pycocoevalcap 1.2 (pip; the Python 3 port of coco-caption's
`bleu/bleu_scorer.py` and `cider/cider_scorer.py`), run on the same captions after our `tokenize`,
joined by spaces, so that only the metric arithmetic is compared (pycocoevalcap's own PTB tokenizer
needs Java and is not used). Agreement is asserted to 1e-14 absolute. Observed: BLEU bit-for-bit
equal, CIDEr-D within 2e-15 on up to 2000 examples (last-bit rounding: math.exp versus np.e ** x,
math.log versus np.log).

The known-value tests work without pycocoevalcap: their expected numbers are derived by hand in the
comments.
"""

import math
import random

import numpy as np
import pytest

from bigvl.evaluators.caption_metrics import bleu, cider_d, cider_d_per_example, tokenize

pytestmark = pytest.mark.unit

TOL = 1e-14

# Hand-written candidate / references groups covering the cases the scorers branch on.
GROUPS = [
    # Exact match with one of several references.
    ("A man riding a wave on top of a surfboard.",
     ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
      "Person on a surfboard riding a big wave."]),
    # Partial overlap, candidate shorter than every reference (brevity penalty).
    ("A dog in the grass.",
     ["A brown dog is running through the green grass.", "A dog runs across a grassy field.",
      "The puppy is playing in the grass outside."]),
    # Shares no words with its references.
    ("Bananas on a kitchen counter.",
     ["Two giraffes standing near trees.", "Giraffes stand together in the zoo enclosure."]),
    # One-word candidate: no bigrams, nothing to guess for n >= 2.
    ("Pizza",
     ["A pizza with cheese and tomatoes on a plate.", "A large pizza sitting on a table."]),
    # Empty after tokenization.
    ("...", ["A cat sleeping on a couch.", "A gray cat curled up on the sofa."]),
    # Longer than the references; repeated words that clipping must cap.
    ("A cat cat cat sitting on a a a red couch next to a cat and a pillow.",
     ["A cat sitting on a red couch.", "Cat on couch."]),
    # Single reference, different casing and punctuation.
    ("TWO people, walking; down the STREET!", ["Two people walking down the street."]),
    # Reference-length tie for the closest length (5 vs 4 and 6 words).
    ("a man rides a horse", ["a man rides horse", "a man is riding a horse"]),
    # Many references, mixed overlap; possessive and hyphen that tokenize splits.
    ("A child's t-shirt hanging on a line.",
     ["A small t-shirt hanging from a clothes line.", "Laundry drying on a line outside.",
      "A kid's shirt hung out to dry.", "A shirt on a clothesline.",
      "Clothes hanging on a line in the sun."]),
    # Same n-grams appear in other examples' references (lower idf).
    ("A man riding a horse on a beach.",
     ["A man on a horse at the beach.", "A person rides a horse along the sand."]),
]


def _coco(candidates, references):
  """The inputs as pycocoevalcap takes them: {id: [tokenized ref, ...]}, {id: [tokenized cand]}."""
  gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(references)}
  res = {i: [" ".join(tokenize(c))] for i, c in enumerate(candidates)}
  return gts, res


def _random_corpus(seed, size):
  """Captions drawn from a small vocabulary, so n-grams overlap often and at every order."""
  rng = random.Random(seed)
  vocab = "a the man dog on in red park".split()
  sentence = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12)))
  cands = [sentence() for _ in range(size)]
  refs = [[sentence() for _ in range(rng.randint(1, 5))] for _ in range(size)]
  return cands, refs


# --- Tokenizer ------------------------------------------------------------------------------------


def test_tokenize_lowercases_and_drops_punctuation():
  assert tokenize("TWO people, walking; down the STREET!") == [
      "two", "people", "walking", "down", "the", "street"]
  assert tokenize("...") == []
  assert tokenize("") == []


def test_tokenize_splits_apostrophes_hyphens_and_decimals():
  # The documented departures from PTB ("man 's", "t-shirt", "3.5").
  assert tokenize("A man's T-shirt, isn't it 3.5 inches?") == [
      "a", "man", "s", "t", "shirt", "isn", "t", "it", "3", "5", "inches"]
  assert tokenize("Café au_lait\tnaïve\n") == ["café", "au", "lait", "naïve"]


def test_tokenize_rejects_non_strings():
  with pytest.raises(TypeError, match="expects a str"):
    tokenize(["a", "list"])


# --- Known values, worked out by hand -------------------------------------------------------------


def test_bleu_identical_caption_is_one():
  # Every n-gram matches: p_k = (g_k + 1e-15) / (g_k + 1e-9) = 1 - O(1e-9), and the lengths are
  # equal, so the brevity penalty is exp(1 - (6 + 1e-9) / (6 + 1e-15)) = 1 - O(1e-10).
  scores = bleu(["the cat sat on the mat"], [["The cat sat on the mat."]])
  assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4"}
  for v in scores.values():
    assert v == pytest.approx(1.0, abs=1e-8)


def test_bleu_no_shared_words_is_zero():
  # No matches: p_1 = 1e-15 / (4 + 1e-9) ~ 2.5e-16, and every BLEU-n contains that factor.
  scores = bleu(["bananas on the counter"], [["two giraffes near trees"]])
  for v in scores.values():
    assert 0 < v < 1e-3
  assert scores["bleu1"] < 1e-15


def test_bleu_clips_repeated_words():
  # Papineni et al.'s example: 7 x "the"; "the" occurs at most twice in one reference, so
  # p_1 = 2/7. Lengths 7 vs references 6 and 7: the closest is 7, no brevity penalty.
  scores = bleu(["the the the the the the the"],
                [["the cat is on the mat", "there is a cat on the mat"]], max_n=1)
  assert list(scores) == ["bleu1"]
  assert scores["bleu1"] == pytest.approx(2 / 7, abs=1e-9)


def test_bleu_short_candidate_smoothing_and_brevity():
  # "the cat" against a 6-word reference: p_1 = 2/2, p_2 = 1/1, and orders 3 and 4 have nothing to
  # guess, so each is (0 + 1e-15) / (0 + 1e-9) = 1e-6. Brevity penalty exp(1 - 6/2) = exp(-2).
  # BLEU-3 = (1 * 1 * 1e-6) ** (1/3) * e^-2 = 1e-2 * e^-2; BLEU-4 = (1e-12) ** (1/4) * e^-2.
  scores = bleu(["the cat"], [["the cat sat on the mat"]])
  bp = math.exp(-2)
  assert scores["bleu1"] == pytest.approx(bp, rel=1e-8)
  assert scores["bleu2"] == pytest.approx(bp, rel=1e-8)
  assert scores["bleu3"] == pytest.approx(1e-2 * bp, rel=1e-8)
  assert scores["bleu4"] == pytest.approx(1e-3 * bp, rel=1e-8)


def test_bleu_closest_reference_length_tie_takes_shorter():
  # A 5-word candidate, references of 4 and 6 words: both are 1 away and the shorter (4) wins, so
  # there is no brevity penalty. All 5 unigrams match ("a" twice, as in the 6-word reference):
  # BLEU-1 = 1. Taking 6 would have given exp(1 - 6/5) ~ 0.82.
  scores = bleu(["a man rides a horse"], [["a man rides horse", "a man is riding a horse"]])
  assert scores["bleu1"] == pytest.approx(1.0, abs=1e-8)


def test_cider_d_perfect_captions_with_disjoint_vocabularies_score_ten():
  # Two examples, each candidate equal to its only reference, no word shared between examples:
  # every n-gram has df 1, idf log 2 - log 1, the candidate vector equals the reference vector, the
  # cosine is 1 for each order 1..4 (both captions have >= 4 words) and the length penalty is 1.
  # Score = 10 * mean(1, 1, 1, 1) / 1 reference = 10 for both.
  cands = ["a black dog runs fast", "two red birds sing loudly"]
  refs = [["A black dog runs fast."], ["Two red birds sing loudly."]]
  np.testing.assert_allclose(cider_d_per_example(cands, refs), [10.0, 10.0], rtol=1e-12)
  assert cider_d(cands, refs) == pytest.approx(10.0, rel=1e-12)


def test_cider_d_no_shared_ngrams_scores_zero():
  # Example 0 shares nothing with its reference: every clipped dot product is exactly 0.
  # Example 1 is a perfect match as above -> 10; the corpus mean is 5.
  cands = ["bananas on a counter", "two red birds sing loudly"]
  refs = [["three giraffes near trees"], ["two red birds sing loudly"]]
  per = cider_d_per_example(cands, refs)
  assert per[0] == 0.0
  assert per[1] == pytest.approx(10.0, rel=1e-12)
  assert cider_d(cands, refs) == pytest.approx(5.0, rel=1e-12)


def test_cider_d_single_example_is_zero():
  # idf = log(1 example) - log(df = 1) = 0 for every reference n-gram: CIDEr needs a corpus.
  assert cider_d(["a dog"], [["a dog"]]) == 0.0


# --- Input errors ---------------------------------------------------------------------------------


def test_errors():
  for fn in (bleu, cider_d):
    with pytest.raises(ValueError, match="2 candidates but 1 reference groups"):
      fn(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[1\] is empty"):
      fn(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="No captions"):
      fn([], [])
    with pytest.raises(TypeError, match=r"references\[0\] is a str"):
      fn(["a cat"], ["a cat"])
    with pytest.raises(TypeError, match="single str"):
      fn("a cat", [["a cat"]])
    with pytest.raises(TypeError, match=r"references\[0\]\[1\] must be a str"):
      fn(["a cat"], [["a cat", None]])
  with pytest.raises(ValueError, match="max_n"):
    bleu(["a"], [["a"]], max_n=0)
  with pytest.raises(ValueError, match="sigma"):
    cider_d(["a"], [["a"]], sigma=0.0)


# --- Against pycocoevalcap ------------------------------------------------------------------------


@pytest.mark.parametrize("max_n", [4, 2])
def test_bleu_matches_pycocoevalcap(max_n):
  pytest.importorskip("pycocoevalcap")
  from pycocoevalcap.bleu.bleu import Bleu

  cands = [c for c, _ in GROUPS]
  refs = [r for _, r in GROUPS]
  for cs, rs in [(cands, refs), _random_corpus(0, 200)]:
    theirs, _ = Bleu(max_n).compute_score(*_coco(cs, rs), verbose=0)
    ours = bleu(cs, rs, max_n=max_n)
    assert list(ours) == [f"bleu{k}" for k in range(1, max_n + 1)]
    np.testing.assert_allclose(list(ours.values()), theirs, rtol=0, atol=TOL)
  # Each group alone, so per-group branches (empty, one word, ties) are not averaged away.
  for c, r in GROUPS:
    theirs, _ = Bleu(max_n).compute_score(*_coco([c], [r]), verbose=0)
    np.testing.assert_allclose(list(bleu([c], [r], max_n=max_n).values()), theirs,
                               rtol=0, atol=TOL)


# n stays 4: pycocoevalcap's CiderScorer always extracts 1..4-grams and fails for any other n.
@pytest.mark.parametrize("sigma", [6.0, 3.0])
def test_cider_d_matches_pycocoevalcap(sigma):
  pytest.importorskip("pycocoevalcap")
  from pycocoevalcap.cider.cider import Cider

  n = 4

  cands = [c for c, _ in GROUPS]
  refs = [r for _, r in GROUPS]
  for cs, rs in [(cands, refs), _random_corpus(1, 200)]:
    theirs, theirs_per = Cider(n=n, sigma=sigma).compute_score(*_coco(cs, rs))
    assert cider_d(cs, rs, n=n, sigma=sigma) == pytest.approx(theirs, abs=TOL, rel=0)
    np.testing.assert_allclose(cider_d_per_example(cs, rs, n=n, sigma=sigma), theirs_per,
                               rtol=0, atol=TOL)
