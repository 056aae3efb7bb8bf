"""Jobs: named asset selections users launch from the UI or the CLI."""

from __future__ import annotations

import dagster as dg

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
    selection=dg.AssetSelection.assets("leaderboard"),
    description="Rebuild the leaderboard from eval_results.",
)

JOBS = [ingest_job, curation_job, tokenization_job, training_job, evaluation_job, leaderboard_job]
