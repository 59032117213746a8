"""Fused ops. Each op is a public function with an `impl` switch and a pure-JAX reference.

attention.py             `attention(q, k, v, *, mask, causal, impl, segment_ids)`: "xla" |
                         "cudnn" | "pallas" | "auto", single-device
sharded.py               the same, run inside shard_map over the batch (and heads) shards:
                         what the models call
flash_attention.py       the Pallas (Triton / interpreter) flash-attention kernels
splash_attention.py      impl="pallas" lowered for TPU: jax's splash attention, bigvl's layout
contrastive_loss.py      SigLIP / CLIP losses: dense references and blockwise Pallas kernels
contrastive_loss_tpu.py  the Mosaic (TPU) bodies of the blockwise losses
loss_vjp.py              the losses' custom VJPs, shared by both backends
platform.py              the kernel body follows the platform being lowered for

See docs/kernels.md and docs/scale.md.
"""
