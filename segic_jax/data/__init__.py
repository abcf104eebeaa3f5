"""Datasets and episode sources."""
