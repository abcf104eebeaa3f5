"""Evaluation: metrics (and, later, the benchmark runners)."""
