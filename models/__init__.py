"""Plain torch models (no dagster, no ray): the VQ tokenizer and the early-fusion LM."""
