"""The Dagster code location of the CheXmix pipeline.

Dagster wiring at the top: ``definitions`` (the code location), ``resources``, ``jobs``,
``sensors``, ``partitions``, plus ``config`` (run config generated from the core dataclasses),
``code_versions`` and ``lineage``. Then one subpackage per concern: ``on_ray`` (Ray start-up,
auth and the Ray Train runners), ``checkpoints`` (publishing and the checkpoint registry) and
``cli`` (command-line tools; ``evaluate`` and ``run_times`` here are their ``python -m`` entry
points).
"""
