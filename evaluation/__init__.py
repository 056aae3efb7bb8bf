"""Benchmark tasks as plain torch/numpy modules (no dagster, no ray)."""

# Hidden-state layer for image features, as a depth fraction: CheXmix recommends early-middle
# layers (7-12 of 32). Kept here so light modules (the Dagster assets) can use it without torch.
DEFAULT_LAYER = 0.35
