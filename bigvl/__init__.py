"""bigvl: pretraining vision and vision-language models with JAX/Flax."""

__version__ = "0.1.0"
