"""Partitions: evaluation is partitioned by checkpoint (keys added by the checkpoint sensor)."""

import dagster as dg

checkpoints_partitions = dg.DynamicPartitionsDefinition(name="checkpoints")
