"""Partitions: evaluation is partitioned by checkpoint (keys added by the checkpoint sensor)."""

import dagster as dg

checkpoints_partitions = dg.DynamicPartitionsDefinition(name="checkpoints")

EVAL_ASSET_KEYS = [
    dg.AssetKey(name)
    for name in ("findings_eval", "inpainting_eval", "report_generation_eval", "retrieval_eval")
]


def evaluated_partitions(instance: dg.DagsterInstance) -> set[str]:
    """Checkpoint partitions for which all four evaluation assets have been materialized."""
    return set.intersection(
        *(set(instance.get_materialized_partitions(key)) for key in EVAL_ASSET_KEYS)
    )
