"""Elapsed time of each asset step of recent runs, read from the Dagster instance's event log.

    python -m pipelines.run_times --since EPOCH_SECONDS    # what `make demo` ends with

Needs ``$DAGSTER_HOME`` (the instance the runs were recorded in).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import dataclass

import dagster as dg

from cxr.progress import format_duration


@dataclass(frozen=True)
class StepTime:
    """One step of one run."""

    run_id: str
    partition: str | None
    step: str
    status: str
    seconds: float | None


def step_times(instance: dg.DagsterInstance, since: float) -> list[StepTime]:
    """Steps of the runs created at or after ``since`` (epoch seconds), oldest run first."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(created_after=dt.datetime.fromtimestamp(since, tz=dt.UTC)),
        order_by="create_timestamp",
        ascending=True,
    )
    rows = []
    for record in records:
        run = record.dagster_run
        partition = run.tags.get("dagster/partition")
        for stats in instance.get_run_step_stats(run.run_id):
            seconds = (
                stats.end_time - stats.start_time
                if stats.start_time is not None and stats.end_time is not None
                else None
            )
            status = stats.status.value if stats.status is not None else "NOT_FINISHED"
            rows.append(StepTime(run.run_id, partition, stats.step_key, status, seconds))
    return rows


def format_table(rows: list[StepTime], since: float, now: float | None = None) -> str:
    """The table ``make demo`` prints: run, partition, step, status, elapsed; then the total."""
    now = time.time() if now is None else now
    if not rows:
        return "no runs recorded since the start"
    header = f"{'run':<9} {'partition':<34} {'step':<34} {'status':<8} {'elapsed':>8}"
    lines = ["Elapsed time per asset step:", header]
    for row in rows:
        elapsed = "-" if row.seconds is None else _short(row.seconds)
        lines.append(
            f"{row.run_id[:8]:<9} {row.partition or '-':<34} {row.step:<34} "
            f"{row.status[:8]:<8} {elapsed:>8}"
        )
    timed = [r for r in rows if r.seconds is not None]
    total = f"total {format_duration(now - since)} wall"
    if timed:
        longest = max(timed, key=lambda r: r.seconds or 0.0)
        total += f"; longest step {longest.step} ({_short(longest.seconds or 0.0)})"
    lines.append(total)
    return "\n".join(lines)


def _short(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(seconds)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--since", type=float, required=True, help="epoch seconds; runs created from then on"
    )
    args = parser.parse_args(argv)
    rows = step_times(dg.DagsterInstance.get(), args.since)
    sys.stdout.write(format_table(rows, args.since) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
