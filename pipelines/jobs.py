"""Jobs: named asset selections users launch from the UI or the CLI."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from pipelines.resources import StorageResource

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingest"),
    description="Raw archive -> source manifest -> studies -> decoded image shards + quarantine.",
)

curation_job = dg.define_asset_job(
    "curation_job",
    selection=dg.AssetSelection.groups("curation"),
    description="Studies -> report sections -> CheXpert-14 labels; patient-level splits.",
)

tokenization_job = dg.define_asset_job(
    "tokenization_job",
    selection=dg.AssetSelection.groups("tokenization"),
    description="Text + image tokenizers, the vocabulary contract and the token shards.",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.groups("training"),
    description="Stage 1 then stage 2 training on Ray Train; checkpoints published for evaluation.",
)

evaluation_job = dg.define_asset_job(
    "evaluation_job",
    selection=dg.AssetSelection.assets(
        "findings_eval", "inpainting_eval", "report_generation_eval", "retrieval_eval"
    ),
    description="The four benchmarks for one checkpoint partition (launched by the sensor).",
)

leaderboard_job = dg.define_asset_job(
    "leaderboard_job",
    selection=dg.AssetSelection.assets("eval_comparisons", "leaderboard"),
    description="Recompute the paired comparisons of re-evaluated checkpoints, then rebuild "
    "the leaderboard from eval_comparisons and eval_results.",
)


class RegisterCheckpointConfig(dg.Config):
    """A checkpoint directory to evaluate (published ``checkpoint.json`` or ``train_lm``)."""

    path: str = Field(description="Absolute path of the checkpoint directory")
    key: str = Field(default="", description="Partition key; empty = reg-<folder name>")


@dg.op(description="Record a checkpoint directory; the checkpoint sensor then evaluates it.")
def register_checkpoint(
    context: dg.OpExecutionContext, config: RegisterCheckpointConfig, storage: StorageResource
) -> None:
    """Register ``config.path`` under the storage root's checkpoint registry."""
    from pipelines.checkpoints.registry import register

    ref = register(storage.root_path, Path(config.path), config.key or None)
    context.log.info(f"registered {ref.key} -> {ref.path}; the checkpoint sensor evaluates it")


@dg.job(description="Register any checkpoint directory for evaluation (the UI path).")
def register_checkpoint_job() -> None:
    """One op: register a checkpoint directory."""
    register_checkpoint()


JOBS = [
    register_checkpoint_job,
    ingest_job,
    curation_job,
    tokenization_job,
    training_job,
    evaluation_job,
    leaderboard_job,
]
