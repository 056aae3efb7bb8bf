"""The Dagster code location of the CheXmix pipeline.

At the top, the Dagster wiring: ``definitions`` (the code location), ``resources``, ``jobs``,
``sensors``, ``partitions``, ``config`` (run config generated from the core dataclasses),
``code_versions`` and ``lineage``; and the command-line tools over the Dagster instance:
``evaluate`` and ``run_times`` (``python -m pipelines.<tool>``) with ``instance`` (which
``$DAGSTER_HOME`` they use). Then one subpackage per concern: ``on_ray`` (Ray start-up, auth and
the Ray Train runners) and ``checkpoints`` (publishing and the checkpoint registry).
"""
