"""Fused ops. Each op is a public function with an `impl` switch and a pure-JAX reference.

attention.py         `attention(q, k, v, *, mask, causal, impl)`: "xla" | "cudnn" | "pallas"
flash_attention.py   the Pallas flash-attention kernels behind impl="pallas"
contrastive_loss.py  SigLIP / CLIP losses: dense references and blockwise Pallas kernels

See docs/kernels.md.
"""
