"""Command-line tools over the Dagster instance.

``evaluate`` (``python -m pipelines.evaluate``, ``chexmix evaluate``), ``run_times``
(``python -m pipelines.run_times``) and ``instance`` (which ``$DAGSTER_HOME`` a command uses).
"""
