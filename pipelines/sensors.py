"""Sensors: new checkpoints become partitions and get evaluated; then the leaderboard updates.

``checkpoint_sensor`` scans the checkpoint folders (names, sizes, mtimes only: fast), adds
every new complete checkpoint as a ``checkpoints`` partition and requests an ``evaluation_job``
run for every checkpoint that is new or whose files changed (cursor: key -> fingerprint; the run
key makes a request idempotent). ``leaderboard_sensor`` rebuilds the leaderboard after each
successful evaluation run.
"""

import json

import dagster as dg

from pipelines.jobs import evaluation_job, leaderboard_job
from pipelines.partitions import checkpoints_partitions, evaluated_partitions
from pipelines.resources import StorageResource


@dg.sensor(
    job=evaluation_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds new complete checkpoints (published, dropped in the external folder, or "
    "registered) as partitions and evaluates them.",
)
def checkpoint_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource
) -> dg.SensorResult:
    """Discover checkpoints; add partitions; request evaluation of new or changed ones."""
    from pipelines.checkpoints.registry import discover

    seen = json.loads(context.cursor) if context.cursor else {}
    refs = discover(storage.root_path)
    existing = set(context.instance.get_dynamic_partitions(checkpoints_partitions.name))
    new_keys = [r.key for r in refs if r.key not in existing]
    # a checkpoint first seen here but already evaluated (e.g. by `pipelines.evaluate run`
    # before the daemon started) is not evaluated again until its files change
    unseen = {r.key for r in refs if r.key not in seen and r.key in existing}
    if unseen:
        done = evaluated_partitions(context.instance)
        seen.update({r.key: r.fingerprint for r in refs if r.key in unseen & done})
    requests = [
        dg.RunRequest(
            partition_key=r.key,
            run_key=f"{r.key}:{r.fingerprint[:16]}",
            tags={"checkpoint_origin": r.origin},
        )
        for r in refs
        if seen.get(r.key) != r.fingerprint
    ]
    cursor = {**seen, **{r.key: r.fingerprint for r in refs}}
    if not requests and not new_keys:
        return dg.SensorResult(skip_reason=f"{len(refs)} checkpoint(s), none new or changed")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=(
            [checkpoints_partitions.build_add_request(new_keys)] if new_keys else []
        ),
        cursor=json.dumps(cursor, sort_keys=True),
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[evaluation_job],
    request_job=leaderboard_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Rebuilds the leaderboard after every successful evaluation run.",
)
def leaderboard_sensor(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    """One leaderboard run per finished evaluation run."""
    return dg.RunRequest(run_key=f"leaderboard-after-{context.dagster_run.run_id}")


SENSORS = [checkpoint_sensor, leaderboard_sensor]
