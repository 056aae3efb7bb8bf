"""Metric rows and the ``eval_results`` table of the DuckDB catalog.

Every number the benchmarks produce becomes one row keyed by (checkpoint, task, method, metric,
observation, mask ratio, setting). Writing a task's rows replaces that checkpoint's previous rows
for the task in one transaction under the catalog's file lock, so re-running an evaluation is
idempotent and two concurrent runs of the same evaluation end with exactly one set of rows.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from cxr.catalog import Catalog

EVAL_RESULTS_DDL = """
CREATE TABLE IF NOT EXISTS eval_results (
    checkpoint_id VARCHAR NOT NULL,
    task VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    observation VARCHAR NOT NULL,
    mask_ratio DOUBLE NOT NULL,
    setting VARCHAR NOT NULL,
    value DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    n INTEGER NOT NULL,
    status VARCHAR NOT NULL,
    checkpoint_hash VARCHAR NOT NULL,
    eval_config_hash VARCHAR NOT NULL,
    code_version VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    samples_path VARCHAR,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (checkpoint_id, task, method, metric, observation, mask_ratio, setting)
)"""

EVAL_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS eval_runs (
    checkpoint_id VARCHAR NOT NULL,
    task VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    checkpoint_path VARCHAR NOT NULL,
    checkpoint_hash VARCHAR NOT NULL,
    checkpoint_manifest VARCHAR NOT NULL,
    eval_config_json VARCHAR NOT NULL,
    eval_config_hash VARCHAR NOT NULL,
    code_version VARCHAR NOT NULL,
    mlflow_run_id VARCHAR,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (checkpoint_id, task, run_id)
)"""


@dataclass(frozen=True)
class MetricRow:
    """One number of one benchmark.

    Attributes:
        task: ``findings``, ``inpainting``, ``report_generation`` or ``retrieval``.
        method: ``model`` (the checkpoint) or a baseline name (``bag_of_codes``, ...).
        metric: e.g. ``auroc``, ``macro_auroc``, ``psnr_vs_original``, ``bleu4``, ``i2t_recall@5``.
        value: None when the metric was not computed (``status`` says why).
        observation: CheXpert observation, or ``""`` when not per observation.
        mask_ratio: Fraction of image tokens masked (0 when not applicable).
        setting: Task-specific variant (mask pattern, scorer), ``""`` if none.
        ci_low: 95% bootstrap interval low (patient resampling), None if not computed.
        ci_high: Interval high.
        n: Samples (images / queries) behind the value.
        status: ``ok`` or ``skipped: <reason>``.
    """

    task: str
    method: str
    metric: str
    value: float | None
    observation: str = ""
    mask_ratio: float = 0.0
    setting: str = ""
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    status: str = "ok"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with NaN turned into None."""
        out = asdict(self)
        for key in ("value", "ci_low", "ci_high"):
            if out[key] is not None and not math.isfinite(out[key]):
                out[key] = None
        return out


@dataclass(frozen=True)
class EvalRunInfo:
    """Provenance of one evaluation (one checkpoint x one task)."""

    checkpoint_id: str
    task: str
    run_id: str
    checkpoint_path: str
    checkpoint_hash: str
    checkpoint_manifest: dict[str, Any]
    eval_config: dict[str, Any]
    eval_config_hash: str
    code_version: str
    mlflow_run_id: str | None = None
    samples_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def upsert_results(catalog: Catalog, info: EvalRunInfo, rows: Sequence[MetricRow]) -> int:
    """Replace ``info.checkpoint_id`` x ``info.task`` rows with ``rows``; record the run.

    Returns:
        Rows written.

    Raises:
        ValueError: Two rows share a key (a bug in the task).
    """
    keys = [(r.method, r.metric, r.observation, round(r.mask_ratio, 6), r.setting) for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate metric keys in {info.task} results")
    now = dt.datetime.now(dt.UTC)

    def write(con: duckdb.DuckDBPyConnection) -> int:
        con.execute(EVAL_RESULTS_DDL)
        con.execute(EVAL_RUNS_DDL)
        con.execute(
            "DELETE FROM eval_results WHERE checkpoint_id = ? AND task = ?",
            [info.checkpoint_id, info.task],
        )
        con.executemany(
            f"INSERT INTO eval_results VALUES ({', '.join(['?'] * 18)})",
            [
                [
                    info.checkpoint_id,
                    info.task,
                    d["method"],
                    d["metric"],
                    d["observation"],
                    float(d["mask_ratio"]),
                    d["setting"],
                    d["value"],
                    d["ci_low"],
                    d["ci_high"],
                    int(d["n"]),
                    d["status"],
                    info.checkpoint_hash,
                    info.eval_config_hash,
                    info.code_version,
                    info.run_id,
                    info.samples_path,
                    now,
                ]
                for d in (r.to_dict() for r in rows)
            ],
        )
        con.execute(
            "INSERT OR REPLACE INTO eval_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                info.checkpoint_id,
                info.task,
                info.run_id,
                info.checkpoint_path,
                info.checkpoint_hash,
                json.dumps(info.checkpoint_manifest, sort_keys=True, default=str),
                json.dumps(info.eval_config, sort_keys=True, default=str),
                info.eval_config_hash,
                info.code_version,
                info.mlflow_run_id,
                now,
            ],
        )
        return len(rows)

    return catalog.write(write)


def read_results(catalog: Catalog, where: str = "TRUE", params: list[object] | None = None):
    """``eval_results`` rows as a polars DataFrame (empty when the table does not exist)."""
    import polars as pl

    if not catalog.path.exists():
        return pl.DataFrame()
    tables = {r[0] for r in catalog.read("SELECT table_name FROM information_schema.tables")}
    if "eval_results" not in tables:
        return pl.DataFrame()
    with catalog.reader() as con:
        table = con.sql(
            f"SELECT * FROM eval_results WHERE {where}", params=params or None
        ).to_arrow_table()
        return pl.from_arrow(table)


def rows_frame(rows: Sequence[MetricRow], checkpoint_id: str):
    """Metric rows as a polars frame shaped like ``eval_results`` (for plots before upsert)."""
    import polars as pl

    return pl.DataFrame(
        [{"checkpoint_id": checkpoint_id, **r.to_dict()} for r in rows],
        schema_overrides={"value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64},
    )
