"""Evaluation: the benchmarks and their protocols (benchmarks.py), running them (evaluate.py, with
records.py, report.py and vos.py), the metrics, and a picture of an episode (example.py)."""
