"""Training: losses, train step, loop."""
