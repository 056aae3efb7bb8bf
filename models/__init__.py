"""Plain torch model code (no dagster, no ray): the VQ tokenizer and the early-fusion transformer."""
