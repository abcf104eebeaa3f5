"""Foreign checkpoints -> segic_jax checkpoints, one key table per model."""
