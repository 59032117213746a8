"""Interleaved image-text data, special tokens, multi-source init, the in-context prompt."""

import numpy as np
import pytest

from bigvl.data import sources, tokenizer as tok_lib, transforms
from bigvl.data.interleaved import END_OF_CHUNK, IMAGE, SPECIAL_TOKENS
from bigvl.evaluators.in_context import query_chunk_mask

pytestmark = pytest.mark.unit

PP = (f"each_image('resize(16)|value_range(-1, 1)')|interleave_text|tokenize|"
      "keep('images', 'text', 'labels')")


@pytest.fixture(scope="module")
def src():
  return sources.build(dict(name="interleaved", inner=dict(name="digits", split="train"),
                            k=3, size=100))


@pytest.fixture(scope="module")
def tok(src):
  return tok_lib.train(src.texts(), 128, special_tokens=SPECIAL_TOKENS)


def test_pp_spec_takes_a_quoted_spec_with_bars():
  ops = transforms.parse("each_image('resize(16)|value_range(-1, 1)')|choose_text|keep('a', 'b')")
  assert ops == [("each_image", ["resize(16)|value_range(-1, 1)"], {}),
                 ("choose_text", [], {}), ("keep", ["a", "b"], {})]


def test_records_are_deterministic_draws_without_replacement(src):
  assert len(src) == 100
  a, b = src[7], src[7]
  np.testing.assert_array_equal(a["labels"], b["labels"])
  for x, y in zip(a["images"], b["images"]):
    np.testing.assert_array_equal(x, y)
  idx = src.indices(7)
  assert len(set(idx.tolist())) == 3
  inner = sources.build(dict(name="digits", split="train"))
  np.testing.assert_array_equal(a["labels"], [inner[int(j)]["label"] for j in idx])
  assert not np.array_equal(src.indices(7), src.indices(8))


def test_markers_are_single_pieces_and_sequence_layout(src, tok):
  ex = transforms.build(PP, tokenizer=tok, text_len=48)(src[3])  # Evaluation: first captions.
  assert ex["images"].shape == (3, 16, 16, 1) and ex["images"].dtype == np.float32
  image_id, end_id = tok.piece_id(IMAGE), tok.piece_id(END_OF_CHUNK)
  ids = ex["text"]
  assert (ids == image_id).sum() == 3 and (ids == end_id).sum() == 3
  names = sources.build(dict(name="digits", split="train")).class_names
  want = "".join(f"{IMAGE}a photo of the digit {names[l]}.{END_OF_CHUNK}" for l in ex["labels"])
  assert tok.decode(ids) == want
  # Each marker precedes its own caption: image j's chunk names label j.
  chunks = tok.decode(ids).split(IMAGE)[1:]
  assert [c.split()[-1].rstrip(".") .replace(END_OF_CHUNK, "").rstrip(".")
          for c in chunks] == [names[l] for l in ex["labels"]]


def test_training_pp_picks_random_captions(src, tok):
  pp = transforms.build(PP, tokenizer=tok, text_len=64)
  texts = {tok.decode(pp(src[0], np.random.default_rng(s))["text"]) for s in range(8)}
  assert len(texts) > 1


def test_missing_special_token_names_the_fix():
  plain = tok_lib.train(["a photo of the digit one."] * 20, 40)
  with pytest.raises(ValueError, match="special_tokens"):
    plain.piece_id(IMAGE)


def test_query_chunk_mask_covers_only_the_last_chunk():
  # 9 = image marker, 0 = pad.
  tokens = np.array([[9, 5, 6, 9, 7, 8, 2, 0],
                     [9, 5, 2, 0, 0, 0, 0, 0]])
  m = query_chunk_mask(tokens, 9, 0)
  np.testing.assert_array_equal(m, [[0, 0, 0, 0, 1, 1, 1, 0],
                                    [0, 1, 1, 0, 0, 0, 0, 0]])


def test_init_also_loads_two_sources_and_rejects_overlap(tmp_path, monkeypatch):
  from bigvl import config_lib, init_from
  from bigvl import checkpoint as ckpt_lib

  stores = {"A": {"enc/w": np.ones((2,), np.float32), "other/x": np.zeros(1, np.float32)},
            "B": {"img/v": np.full((3,), 2.0, np.float32)}}
  monkeypatch.setattr(ckpt_lib, "load_params", lambda path, **kw: dict(stores[path]))
  import jax.numpy as jnp
  params = {"lm": {"w": jnp.zeros((2,))}, "vision": {"v": jnp.zeros((3,))},
            "new": {"z": jnp.zeros((1,))}}
  config = config_lib.with_defaults(config_lib.ml_collections.ConfigDict(dict(
      init_from="A", init_subtree="enc", init_into="lm",
      init_also=(dict(init_from="B", init_subtree="img", init_into="vision"),))))
  merged, report = init_from.params_from(config, params)
  np.testing.assert_array_equal(merged["lm"]["w"], 1.0)
  np.testing.assert_array_equal(merged["vision"]["v"], 2.0)
  assert report["new"] == ["new/z"]
  config.init_also = (dict(init_from="B", init_subtree="img", init_into="lm"),
                      dict(init_from="B", init_subtree="img", init_into="lm"))
  with pytest.raises(config_lib.ConfigError, match="gives params another source gives"):
    init_from.params_from(config, params)
  config.init_also = (dict(init_from="B", into="vision"),)
  with pytest.raises(config_lib.ConfigError, match="unknown"):
    init_from.params_from(config, params)


def test_model_card_names_every_init_source(tmp_path):
  from bigvl import config_lib, model_card

  def init_lines(config):
    card = open(model_card.write(str(tmp_path), config, {}, None)).read()
    return [line for line in card.splitlines() if line.startswith("- initialised from:")]

  config = config_lib.with_defaults(config_lib.ml_collections.ConfigDict(dict(
      init_from="runs/lm", init_into="lm",
      init_also=(dict(init_from="runs/siglip", init_subtree="img", init_into="vision"),))))
  assert init_lines(config) == [
      "- initialised from: `(all)` of runs/lm, into `lm`",
      "- initialised from: `img` of runs/siglip, into `vision`"]
  assert init_lines(config_lib.with_defaults(config_lib.ml_collections.ConfigDict())) == []
