"""Benchmark tasks as plain torch/numpy modules (no dagster, no ray)."""

# A fixed hidden-state layer for image features, as a depth fraction (CheXmix recommends
# early-middle layers, 7-12 of 32), for callers that do not choose one on VALIDATE (the
# benchmark evaluation does: evaluation.findings.select_layer). Kept here without torch.
DEFAULT_LAYER = 0.35
