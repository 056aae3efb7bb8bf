"""Checkpoint storage.

``publish``: a finished training checkpoint copied with its manifest, atomically; ``registry``:
every checkpoint the evaluation can see, under its partition key, and how to open one.
"""
