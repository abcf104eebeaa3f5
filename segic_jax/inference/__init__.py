"""Inference jobs and APIs."""
