"""Fused ops. Each op is a public function with an `impl` switch and a pure-JAX reference."""
