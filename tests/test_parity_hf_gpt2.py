"""HF transformers GPT2LMHeadModel -> bigvl `lm` (CausalLM): the same logits.

Tolerance: max |bigvl - HF| <= 1e-5 on the logits, float32 everywhere, random token ids
(batch 2, length 20). References have random weights (every parameter perturbed, so no bias
is a constant) and are written with `save_pretrained`, then converted from that directory
exactly as a user would (tools/convert_checkpoint.py hf DIR OUT).
"""

import json
import os

import jax
import numpy as np
import pytest

from bigvl.convert import testing

testing.import_torch_references()

import torch  # noqa: E402
import transformers  # noqa: E402

from bigvl import convert  # noqa: E402
from bigvl.convert import bigvl_io, common, hf_gpt2  # noqa: E402
from bigvl.models.lm import CausalLM  # noqa: E402
from conftest import load_tool  # noqa: E402

TOL = 1e-5
TINY = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32, bos_token_id=99,
            eos_token_id=99)
quiet = lambda _: None


def reference(hf_config, seed: int = 0):
  torch.manual_seed(seed)
  ref = transformers.GPT2LMHeadModel(hf_config).eval()
  testing.randomize_(ref, seed=seed)
  return ref


def token_ids(vocab_size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab_size, (2, 20)).astype(np.int32)


def max_logit_diff(ref, model, params, ids) -> float:
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids).long()).logits.numpy()
  with jax.default_matmul_precision("highest"):
    got = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, ids)
  assert got.shape == want.shape
  return testing.max_abs_diff(got, want)


def check_parity(hf_config, tmp_path, *, seed: int = 0) -> float:
  ref = reference(hf_config, seed)
  ref.save_pretrained(tmp_path / "hf")
  model, params = convert.load_converted(
      convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "bigvl"), progress=quiet))
  assert isinstance(model, CausalLM)
  diff = max_logit_diff(ref, model, params, token_ids(hf_config.vocab_size, seed))
  print(f"max abs logit diff: {diff:.3e}")
  assert diff <= TOL, f"logits: max abs diff {diff:.2e} > {TOL}"
  return diff


def converted_config(out) -> dict:
  with open(os.path.join(out, "config.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("gpt2") / "hf"
  reference(transformers.GPT2Config(**TINY)).save_pretrained(path)
  return str(path)


@pytest.mark.unit
def test_tiny_gpt2_matches_hf(tmp_path):
  check_parity(transformers.GPT2Config(**TINY), tmp_path)
  assert converted_config(tmp_path / "bigvl") == dict(
      name="lm", vocab_size=100, width=64, depth=2, mlp_dim=256, num_heads=4, max_len=32,
      act="gelu_tanh", ln_eps=1e-5, tie_embeddings=True)
  meta = convert.load_meta(str(tmp_path / "bigvl"))
  assert (meta["text_len"], meta["eos_id"], meta["format"]) == (32, 99, "HF GPT-2")


@pytest.mark.unit
def test_tiny_gpt2_untied_head_exact_gelu_and_n_inner(tmp_path):
  cfg = transformers.GPT2Config(**dict(TINY, n_layer=1), n_inner=96, activation_function="gelu",
                                tie_word_embeddings=False)
  check_parity(cfg, tmp_path, seed=1)
  got = converted_config(tmp_path / "bigvl")
  assert (got["mlp_dim"], got["act"], got["tie_embeddings"], got["head_bias"]) == \
      (96, "gelu", False, False)


@pytest.mark.unit
def test_legacy_state_dict_with_mask_buffers_and_no_prefix(tmp_path):
  # The original OpenAI conversions: pytorch_model.bin, GPT2Model's keys (no "transformer."),
  # the causal-mask buffers attn.bias / attn.masked_bias, and here also the tied lm_head.
  cfg = transformers.GPT2Config(**TINY)
  ref = reference(cfg)
  state = {k[len("transformer."):] if k.startswith("transformer.") else k: v.clone()
           for k, v in ref.state_dict().items()}
  for i in range(cfg.n_layer):
    state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
  os.makedirs(tmp_path / "hf")
  cfg.save_pretrained(tmp_path / "hf")
  torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
  model, params = convert.load_converted(
      convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "bigvl"), progress=quiet))
  assert max_logit_diff(ref, model, params, token_ids(100)) <= TOL


@pytest.mark.unit
def test_cli_converts_a_save_pretrained_dir(tiny_hf_dir, tmp_path, capsys):
  tool = load_tool("convert_checkpoint")
  out = str(tmp_path / "converted")
  assert tool.main(["hf", tiny_hf_dir, out]) == 0
  assert "into a bigvl lm model" in capsys.readouterr().out
  model, params = convert.load_converted(out)
  assert isinstance(model, CausalLM) and model.tie_embeddings
  ref = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
  assert max_logit_diff(ref, model, params, token_ids(100)) <= TOL


@pytest.mark.unit
def test_mismatched_shape_names_the_tensor(tiny_hf_dir, tmp_path, capsys):
  cfg = dict(name="lm", vocab_size=100, width=64, depth=2, mlp_dim=128, num_heads=4, max_len=32,
             act="gelu_tanh", ln_eps=1e-5, tie_embeddings=True)
  out = tmp_path / "out"
  with pytest.raises(convert.ConversionError,
                     match=r"Shape mismatch at h\.0\.mlp\.c_fc\.weight \(bigvl "
                           r"block0/mlp/fc1/kernel\): the checkpoint has \(64, 256\), the "
                           r"config expects \(64, 128\)"):
    convert.from_hf(tiny_hf_dir, str(out), model_config=cfg, progress=quiet)
  assert not out.exists() and os.listdir(tmp_path) == []  # Nothing half-written.
  # The CLI reports it as an error, not a traceback.
  tool = load_tool("convert_checkpoint")
  assert tool.main(["hf", tiny_hf_dir, str(out), "--model_config",
                    json.dumps(dict(cfg, mlp_dim=256, width=32))]) == 1
  assert "Shape mismatch at wte.weight" in capsys.readouterr().err
  # An untied head in the config, a tied checkpoint: the missing tensor is named.
  with pytest.raises(convert.ConversionError, match=r"no tensor lm_head\.weight"):
    convert.from_hf(tiny_hf_dir, str(out), progress=quiet,
                    model_config=dict(cfg, mlp_dim=256, tie_embeddings=False, head_bias=False))


@pytest.mark.unit
def test_unsupported_attention_option_is_refused(tmp_path):
  cfg = transformers.GPT2Config(**dict(TINY, n_layer=1), scale_attn_by_inverse_layer_idx=True)
  cfg.save_pretrained(tmp_path / "hf")
  with pytest.raises(convert.ConversionError, match="scale_attn_by_inverse_layer_idx=True"):
    hf_gpt2.model_config(cfg)


@pytest.mark.unit
def test_rules_invert_bit_exact():
  # HF state dict -> bigvl params -> HF state dict gives back every tensor unchanged.
  cfg = transformers.GPT2Config(**TINY)
  state = {k: v.numpy() for k, v in reference(cfg).state_dict().items()
           if k != "lm_head.weight"}  # Tied: save_pretrained leaves it out too.
  norm = hf_gpt2.normalize(state)
  model_cfg, meta = hf_gpt2.model_config(cfg, {k: v.shape for k, v in norm.items()})
  expected = bigvl_io.abstract_params(model_cfg, meta)
  params = common.apply_rules(norm, hf_gpt2.rules(model_cfg), expected, source=hf_gpt2.SOURCE)
  back = hf_gpt2.denormalize(common.invert_rules(params, hf_gpt2.rules(model_cfg),
                                                 target=hf_gpt2.NAME))
  assert sorted(back) == sorted(state)
  for k in state:
    np.testing.assert_array_equal(back[k], state[k], err_msg=k)


@pytest.mark.integration
@pytest.mark.slow
def test_gpt2_124m_matches_hf(tmp_path):
  # GPT2Config's defaults are OpenAI's GPT-2 small (124M parameters, 50257 tokens).
  check_parity(transformers.GPT2Config(), tmp_path)


@pytest.mark.integration
@pytest.mark.slow  # About 20 s.
def test_converted_gpt2_starts_a_flamingo_lm_with_hf_logits(tiny_hf_dir, tmp_path):
  """Bringing a real LM: the converted directory is an init source (`init_from` +
  `init_into="lm"`), and at init (gates 0) the Flamingo's logits are GPT-2's."""
  import jax.numpy as jnp
  import ml_collections
  from bigvl import config_lib, init_from, models
  tool = load_tool("convert_checkpoint")
  out = str(tmp_path / "converted")
  assert tool.main(["hf", tiny_hf_dir, out]) == 0
  lm_cfg = converted_config(out)
  lm_cfg.pop("name")
  model = models.build(dict(
      name="flamingo", vision=dict(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=4),
      lm=lm_cfg, resampler=dict(depth=1, num_latents=4, num_heads=4, mlp_dim=64),
      xattn=dict(num_heads=4, mlp_dim=64), image_token_id=7))
  ids = token_ids(100)
  ids[:, 3] = 7                                    # One image marker per row.
  images = jnp.zeros((2, 1, 8, 8, 3))
  params = model.init(jax.random.key(0, impl="unsafe_rbg"), images, ids)["params"]
  config = config_lib.with_defaults(ml_collections.ConfigDict(dict(init_from=out,
                                                                   init_into="lm")))
  params, report = init_from.params_from(config, params)
  assert report["loaded"] and all(k.startswith("lm/") for k in report["loaded"])
  assert not [k for k in report["new"] if k.startswith("lm/")]
  got = np.asarray(model.apply({"params": params}, images, ids))
  ref = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
  with torch.no_grad():
    want = ref(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
  assert testing.max_abs_diff(got, want) <= TOL
