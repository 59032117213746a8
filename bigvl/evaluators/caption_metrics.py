"""Captioning metrics: corpus BLEU-1..4 and CIDEr-D as the COCO caption evaluation computes them.

The arithmetic follows coco-caption's `Bleu` and `Cider` scorers (the Python 3 port is the pip
package `pycocoevalcap`); given the same tokens the numbers agree with theirs to rounding (see
tests/test_caption_metrics.py). What differs is tokenization, which is why these functions take raw
strings and tokenize them with `tokenize` below.

Tokenization. coco-caption runs Stanford's Java PTBTokenizer (`-lowerCase`) and then drops tokens
that are punctuation. bigvl carries no Java, so `tokenize` approximates it: lowercase, then split on
every character that is not a Unicode letter or digit. Apostrophes, hyphens and decimal points are
therefore separators, not parts of words:

  text               PTB + coco punctuation removal *   `tokenize`
  "A man's hat."     a man 's hat                       a man s hat
  "don't"            do n't                             don t
  "a t-shirt"        a t-shirt                          a t shirt
  "3.5 inches"       3.5 inches                         3 5 inches
  (* as pycocoevalcap 1.2's PTBTokenizer, stanford-corenlp 3.4.1, outputs them.)

Splitting at apostrophes (rather than keeping "man's" whole) was chosen because PTB also splits the
clitic off, so the stem ("man") matches a reference that says "man" and the token count is the same
as PTB's for possessives. Scores on text with contractions, hyphenated words or decimals can differ
slightly from the official evaluation; for exact official numbers, tokenize with PTB and feed
pycocoevalcap.

Quirks of the reference implementation that are kept on purpose, so the numbers match:
  * BLEU smooths every n-gram precision as (correct + 1e-15) / (guessed + 1e-9), so an order with
    nothing to guess (a candidate shorter than n words) contributes a factor 1e-6, not 0 or 1; and
    BLEU-n is the geometric mean of precisions 1..n (cumulative), not precision n alone.
  * BLEU's brevity penalty uses, per candidate, the reference length closest to the candidate's
    (ties go to the shorter reference), summed over the corpus.
  * CIDEr-D's document frequencies are taken over the references of the evaluated set, so the score
    depends on the whole set: a set of one image has idf = log(1) - log(1) = 0 and scores 0.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Sequence

import numpy as np

# Letters and digits of any script: `\w` minus the underscore.
_TOKEN_RE = re.compile(r"[^\W_]+")

# The smoothing constants of coco-caption's BleuScorer.compute_score.
_BLEU_TINY = 1e-15  # Added to matched counts (numerators) and to the candidate length.
_BLEU_SMALL = 1e-9  # Added to guessed counts (denominators) and to the reference length.

_NGramCounts = dict[tuple[str, ...], int]


def tokenize(text: str) -> list[str]:
  """Lowercases `text` and splits it into runs of letters and digits; everything else separates.

  An approximation of coco-caption's PTB tokenization plus punctuation removal; see the module
  docstring for where the two differ (apostrophes, hyphens, decimal points).
  """
  if not isinstance(text, str):
    raise TypeError(f"tokenize expects a str, got {type(text).__name__}: {text!r}")
  return _TOKEN_RE.findall(text.lower())


def _ngram_counts(tokens: Sequence[str], max_n: int) -> _NGramCounts:
  """Counts of every n-gram of `tokens` for n = 1..max_n, keyed by the n-gram's tuple."""
  counts = collections.Counter()
  for k in range(1, max_n + 1):
    for i in range(len(tokens) - k + 1):
      counts[tuple(tokens[i:i + k])] += 1
  return counts


def _prepare(candidates: Sequence[str], references: Sequence[Sequence[str]]
             ) -> tuple[list[list[str]], list[list[list[str]]]]:
  """Validates the aligned inputs and tokenizes them: (candidate tokens, per-example ref tokens)."""
  if isinstance(candidates, str):
    raise TypeError("candidates must be a sequence of strings (one caption per example), "
                    "got a single str.")
  if isinstance(references, str):
    raise TypeError("references must be a sequence of sequences of strings (the reference "
                    "captions of each example), got a single str.")
  candidates, references = list(candidates), list(references)
  if len(candidates) != len(references):
    raise ValueError(f"{len(candidates)} candidates but {len(references)} reference groups; "
                     "they are aligned by index and must have the same length.")
  if not candidates:
    raise ValueError("No captions to score: candidates and references are empty.")
  cand_tokens, ref_tokens = [], []
  for i, (cand, refs) in enumerate(zip(candidates, references)):
    if not isinstance(cand, str):
      raise TypeError(f"candidates[{i}] must be a str, got {type(cand).__name__}: {cand!r}")
    if isinstance(refs, str):
      # A flat list of strings would otherwise be read as one-character references.
      raise TypeError(f"references[{i}] is a str; each example needs a list of reference "
                      f"strings, e.g. [{refs!r}].")
    refs = list(refs)
    if not refs:
      raise ValueError(f"references[{i}] is empty; every candidate needs at least one reference.")
    for j, ref in enumerate(refs):
      if not isinstance(ref, str):
        raise TypeError(f"references[{i}][{j}] must be a str, got {type(ref).__name__}: {ref!r}")
    cand_tokens.append(tokenize(cand))
    ref_tokens.append([tokenize(r) for r in refs])
  return cand_tokens, ref_tokens


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]],
         max_n: int = 4) -> dict[str, float]:
  """Corpus-level BLEU-1..BLEU-`max_n` of `candidates` against `references`, as coco-caption's Bleu.

  Args:
    candidates: one generated caption per example (untokenized; `tokenize` is applied).
    references: for each example, a non-empty sequence of reference captions (untokenized).
    max_n: the highest n-gram order.

  Returns:
    {"bleu1": ..., "bleu{max_n}": ...}. BLEU-n is the geometric mean of the corpus's clipped n-gram
    precisions of orders 1..n (each count clipped by its largest count in any one reference of that
    example), times the brevity penalty exp(1 - r / c) when the total candidate length c is below r,
    the sum over examples of the reference length closest to the candidate's.
  """
  if max_n < 1:
    raise ValueError(f"max_n must be >= 1, got {max_n}.")
  cand_tokens, ref_tokens = _prepare(candidates, references)
  correct = [0] * max_n  # Clipped n-gram matches, per order, summed over the corpus.
  guessed = [0] * max_n  # Candidate n-grams, per order.
  cand_len = ref_len = 0
  for cand, refs in zip(cand_tokens, ref_tokens):
    max_ref_counts: dict[tuple[str, ...], int] = {}
    for ref in refs:
      for gram, count in _ngram_counts(ref, max_n).items():
        max_ref_counts[gram] = max(max_ref_counts.get(gram, 0), count)
    for gram, count in _ngram_counts(cand, max_n).items():
      correct[len(gram) - 1] += min(count, max_ref_counts.get(gram, 0))
    for k in range(1, max_n + 1):
      guessed[k - 1] += max(0, len(cand) - k + 1)
    cand_len += len(cand)
    # Closest reference length; on a tie the key's second element picks the shorter one.
    ref_len += min((len(r) for r in refs), key=lambda n: (abs(n - len(cand)), n))

  ratio = (cand_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
  brevity = math.exp(1.0 - 1.0 / ratio) if ratio < 1.0 else 1.0
  scores = {}
  product = 1.0
  for k in range(max_n):
    product *= (correct[k] + _BLEU_TINY) / (guessed[k] + _BLEU_SMALL)
    scores[f"bleu{k + 1}"] = float(product ** (1.0 / (k + 1)) * brevity)
  return scores


def cider_d_per_example(candidates: Sequence[str], references: Sequence[Sequence[str]],
                        n: int = 4, sigma: float = 6.0) -> np.ndarray:
  """CIDEr-D of each candidate, as coco-caption's Cider; see `cider_d` for the definition.

  The idf comes from the references of the whole set passed in, so an example's score depends on
  the other examples: score the full evaluation set in one call, not in pieces.

  Returns:
    float64 array of shape (len(candidates),).
  """
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}.")
  if not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma}.")
  cand_tokens, ref_tokens = _prepare(candidates, references)

  ref_counts = [[_ngram_counts(r, n) for r in refs] for refs in ref_tokens]
  # Document frequency: the number of examples with the n-gram in at least one of their references.
  doc_freq = collections.Counter()
  for refs in ref_counts:
    doc_freq.update(set().union(*refs))
  log_num_docs = math.log(len(cand_tokens))

  def tfidf(tokens):
    """Per order: ({n-gram: tf * idf}, L2 norm); and the length the penalty compares."""
    vecs = [{} for _ in range(n)]
    sq_norms = [0.0] * n
    for gram, tf in _ngram_counts(tokens, n).items():
      # An n-gram in no reference gets df 1 (idf = log N) rather than a division by zero.
      weight = tf * (log_num_docs - math.log(max(1.0, doc_freq.get(gram, 0))))
      vecs[len(gram) - 1][gram] = weight
      sq_norms[len(gram) - 1] += weight ** 2
    # The reference code's length is the bigram count, len - 1 (0 when empty). Differences of that
    # equal differences of word counts unless a caption is empty, and then the clipped dot product
    # is 0 whatever the penalty, so the word count gives identical scores.
    length = len(tokens)
    return vecs, [math.sqrt(s) for s in sq_norms], length

  scores = np.zeros(len(cand_tokens), dtype=np.float64)
  for i, (cand, refs) in enumerate(zip(cand_tokens, ref_tokens)):
    c_vecs, c_norms, c_len = tfidf(cand)
    per_order = [0.0] * n  # Summed over this example's references.
    for ref in refs:
      r_vecs, r_norms, r_len = tfidf(ref)
      penalty = math.exp(-float(c_len - r_len) ** 2 / (2.0 * sigma ** 2))
      for k in range(n):
        r_vec = r_vecs[k]
        # The "-D" clipping: a candidate n-gram repeated beyond the reference earns no extra credit.
        dot = 0.0
        for gram, weight in c_vecs[k].items():
          r_weight = r_vec.get(gram, 0.0)
          dot += min(weight, r_weight) * r_weight
        if c_norms[k] != 0.0 and r_norms[k] != 0.0:
          dot /= c_norms[k] * r_norms[k]
        per_order[k] += dot * penalty
    scores[i] = sum(per_order) / n / len(refs) * 10.0
  return scores


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]],
            n: int = 4, sigma: float = 6.0) -> float:
  """Corpus CIDEr-D of `candidates` against `references`, as coco-caption's Cider.

  For each example and each reference, and for each order 1..n, the candidate's and the reference's
  n-gram tf-idf vectors (idf = log(#examples) - log(df), df counted over the references of this set)
  are compared by a clipped cosine, sum_g min(c_g, r_g) * r_g / (|c| |r|), times the length penalty
  exp(-(l_c - l_r)^2 / (2 sigma^2)). An example's score is 10 times the mean of these over orders
  and references; the corpus score is the mean over examples.

  Args:
    candidates: one generated caption per example (untokenized; `tokenize` is applied).
    references: for each example, a non-empty sequence of reference captions (untokenized).
    n: the highest n-gram order. (pycocoevalcap's scorer always extracts 1..4-grams and fails for
      any other n; here n simply sets the orders averaged.)
    sigma: standard deviation of the Gaussian length penalty, in words.
  """
  return float(np.mean(cider_d_per_example(candidates, references, n=n, sigma=sigma)))
