"""Multilingual SigLIP on Tux Paint's stamps: train in five languages, retrieve in two others.

    apt-get install tuxpaint-stamps-default  # once: /usr/share/tuxpaint/stamps
    python -m bigvl.train --config configs/demo/siglip_tuxpaint.py --workdir workdirs/siglip_tuxpaint

Trains on the 640 `train` stamps (clip art on white, 48x48 crops) with their captions in
English, French, German, Spanish and Italian (one drawn per step), then measures image <->
text retrieval (recall@1/5) on the 145 `test` stamps in English and French (languages it
trained on, unseen images) and in Portuguese (`pt`) and Dutch (`nl`), two languages it never
trained on; each test stamp has a caption in all of them (`Tuxpaint("test").languages()`).
What it finds in pt or nl comes from words and subwords they share with the training
languages (pt "Um triciclo rosa.", es and it "Un triciclo rosa.", de "Ein rosa Dreirad.").
docs/data.md has the numbers it reaches (chance: 1/145 at recall@1, 5/145 at recall@5).

The tokenizer is a BPE trained on the train split's captions in the five training languages
plus its Portuguese and Dutch ones (`tokenizer_lang`; not byte fallback): it has pieces for
their characters and words (1 <unk> piece in about 1,300 in each language's test captions;
Russian, which it was not given, comes out 40% <unk>), while the model never sees a pt or nl
caption, and the test stamps' captions are in neither. Arg: `steps=N,batch=N`.
"""

from bigvl.config_lib import parse_arg
import ml_collections

TRAIN_LANGS = ("en", "fr", "de", "es", "it")
HELD_OUT_LANGS = ("pt", "nl")              # Never trained on: the cross-lingual test.
EVAL_LANGS = ("en", "fr") + HELD_OUT_LANGS


def tower(**kw):
  # configs/demo/siglip_digits.py says what each option does.
  return dict(width=64, depth=2, mlp_dim=256, num_heads=4, attention_impl="xla",
              remat="none", scan_layers=False, **kw)


def get_config(arg=None):
  arg = parse_arg(arg, steps=1500, batch=64)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps
  c.batch_size = arg.batch
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 500

  c.data = dict(
      # Stamps fitted into 56x56 on white, a random 48x48 crop of it: shifts by up to 4
      # pixels either way, with white borders (random_crop's pad would add black ones).
      train=dict(name="tuxpaint", split="train", lang=TRAIN_LANGS, size=56,
                 tokenizer_lang=HELD_OUT_LANGS,
                 pp="flip_lr|random_crop(48)|value_range(-1, 1)|choose_text|"
                    "tokenize|keep('image', 'text')"),
      vocab_size=2000,
      text_len=32,
  )

  c.model = dict(
      name="two_towers",
      image=tower(patch_size=8, pool="map", posemb="learn"),  # 48/8: 6x6 = 36 patches.
      text=tower(vocab_size=None, max_len=32, pool="last"),
      embed_dim=64,
      temperature_init=10.0,
      bias_init=-10.0,
      dtype="float32",
  )
  c.objective = dict(name="siglip", loss_impl="xla", chunked=False)
  c.optimizer = dict(lr=1e-3, warmup_steps=100, weight_decay=1e-4, schedule="cosine")

  c.evals = {
      f"retrieval_{lang}": dict(name="retrieval", ks=(1, 5), data=dict(
          name="tuxpaint", split="test", lang=lang, size=56,
          pp="central_crop(48)|value_range(-1, 1)"))
      for lang in EVAL_LANGS
  }
  return c
