"""Benchmark tasks as plain torch/numpy modules (no dagster, no ray)."""
