"""Paired comparisons: checkpoint vs checkpoint, and checkpoint vs its task's baselines.

Two arms scored on the same TEST images are compared on the SAME patient resamples: each
resample draws patients with replacement once, both arms' metric is computed on it, and the
difference is kept. The interval of that difference is much tighter than what two separate
intervals suggest, because the per-image difficulty that both arms share cancels. Reported per
(task, metric, mask ratio, setting): the difference ``a - b`` on all patients, its 95% percentile
interval, and ``p_le_zero``, the fraction of resamples where ``a - b <= 0`` (a one-sided
bootstrap p-value for "a is better").

Everything is recomputed from the per-sample outputs (``samples.parquet``) each evaluation
keeps, never from a model. Which pairs (``comparison_pairs``): every checkpoint against each
other checkpoint of its stage-1 family (the stage-1 checkpoint and every arm initialised from
it: stage 2 vs stage 1 continued is CheXmix's ablation), and every checkpoint against each of
its task's baselines, evaluated in the same run on the same images.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cxr.catalog import Catalog
from evaluation.findings import weighted_macro_auroc
from evaluation.retrieval import chance_recall
from evaluation.stats import resample_counts, weighted_nanmean

EVAL_COMPARISONS_DDL = """
CREATE TABLE IF NOT EXISTS eval_comparisons (
    checkpoint_a VARCHAR NOT NULL,
    checkpoint_b VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    arm_a VARCHAR NOT NULL,
    arm_b VARCHAR NOT NULL,
    task VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    observation VARCHAR NOT NULL,
    mask_ratio DOUBLE NOT NULL,
    setting VARCHAR NOT NULL,
    value_a DOUBLE,
    value_b DOUBLE,
    diff DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    p_le_zero DOUBLE,
    n_patients INTEGER NOT NULL,
    n_boot INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    eval_config_hash VARCHAR NOT NULL,
    code_version VARCHAR NOT NULL,
    run_id_a VARCHAR NOT NULL,
    run_id_b VARCHAR NOT NULL,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (checkpoint_a, checkpoint_b, task, metric, observation, mask_ratio, setting)
)"""

#: Baselines of each task that are compared with the checkpoint (``method`` in the samples;
#: ``chance`` is analytic). The VQ reconstruction is a ceiling, not a baseline.
TASK_BASELINES = {
    "findings": ("bag_of_codes", "pixel_blocks"),
    "inpainting": ("image_blind_mode_fill",),
    "report_generation": ("nearest_train_report_codes", "nearest_train_report_features"),
    "retrieval": ("chance",),
}
#: Preference when ordering a pair (a - b): later / treatment arms first.
ARM_ORDER = ("stage2", "stage1-continued", "stage1")


@dataclass(frozen=True)
class PairedEstimate:
    """``a - b`` on all samples with its paired patient-bootstrap interval."""

    value_a: float
    value_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_le_zero: float
    n_patients: int
    n_boot: int


def paired_difference(
    groups: Sequence[str],
    statistic_a: Callable[[np.ndarray], np.ndarray],
    statistic_b: Callable[[np.ndarray], np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedEstimate:
    """Difference of two statistics over the same patient resamples.

    Args:
        groups: Patient id per (aligned) sample, length M.
        statistic_a: Sample weights float (B, M), one row per resample (how often each sample
            is drawn; all ones: every sample once) -> arm a's metric per row, float (B,), NaN
            where undefined.
        statistic_b: The same for arm b, on the same rows.
        n_boot: Resamples (0: no interval).
        seed: Resampling seed.
        alpha: 1 - coverage.

    Returns:
        The estimate; interval and ``p_le_zero`` are NaN when fewer than half of the
        resamples gave a defined difference.
    """
    everything = np.ones((1, len(groups)))
    value_a, value_b = float(statistic_a(everything)[0]), float(statistic_b(everything)[0])
    counts = resample_counts(groups, n_boot, seed)
    diffs = np.asarray(statistic_a(counts), dtype=float) - np.asarray(
        statistic_b(counts), dtype=float
    )
    defined = diffs[np.isfinite(diffs)]
    n_patients = len(set(groups))
    if n_boot <= 0 or len(defined) == 0 or len(defined) < n_boot / 2:
        nan = float("nan")
        return PairedEstimate(
            value_a, value_b, value_a - value_b, nan, nan, nan, n_patients, n_boot
        )
    low, high = np.quantile(defined, [alpha / 2, 1 - alpha / 2])
    return PairedEstimate(
        value_a,
        value_b,
        value_a - value_b,
        float(low),
        float(high),
        float(np.mean(defined <= 0)),
        n_patients,
        n_boot,
    )


@dataclass(frozen=True)
class Comparable:
    """One metric of two aligned arms: what ``paired_difference`` needs, and its key."""

    metric: str
    observation: str
    mask_ratio: float
    setting: str
    groups: np.ndarray
    #: Sample weights (B, M) -> the metric per weight row (B,), see ``paired_difference``.
    statistic_a: Callable[[np.ndarray], np.ndarray]
    statistic_b: Callable[[np.ndarray], np.ndarray]


def _aligned(a: pl.DataFrame, b: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """Rows of ``a`` and ``b`` joined on ``key`` (suffix ``_b`` for b's columns), key-sorted."""
    return a.join(b, on=key, how="inner", suffix="_b").sort(key)


def _findings(a: pl.DataFrame, b: pl.DataFrame, setting: Callable[[int, int], str]):
    for ratio in sorted(set(a["mask_ratio"].to_list()) & set(b["mask_ratio"].to_list())):
        at = a.filter(pl.col("mask_ratio") == ratio)
        bt = b.filter(pl.col("mask_ratio") == ratio)
        observations = sorted(set(at["observation"].to_list()) & set(bt["observation"].to_list()))
        if not observations:
            continue
        wide = []
        for side in (at, bt):
            side = side.filter(pl.col("observation").is_in(observations))
            wide.append(
                (
                    side.pivot("observation", index=["image_id", "patient_id"], values="score"),
                    side.pivot("observation", index="image_id", values="label"),
                )
            )
        images = (
            wide[0][0]
            .select("image_id", "patient_id")
            .join(wide[1][0].select("image_id"), on="image_id")
        )
        images = images.sort("image_id")
        matrices = []
        for scores, labels in wide:
            s = images.join(scores, on=["image_id", "patient_id"], how="left")
            y = images.join(labels, on="image_id", how="left")
            matrices.append(
                (
                    s.select(observations).to_numpy().astype(float),
                    y.select(observations).to_numpy().astype(float),
                )
            )
        (sa, ya), (sb, yb) = matrices
        if not np.array_equal(np.isnan(ya), np.isnan(yb)) or not np.array_equal(
            np.nan_to_num(ya), np.nan_to_num(yb)
        ):
            raise ValueError(
                f"findings labels differ between the two sides at mask ratio {ratio} (different "
                "uncertainty policies or views?): a paired comparison needs the same targets"
            )
        # an image scored for one observation but excluded for another carries NaN targets
        ya = np.where(np.isnan(sa) | np.isnan(sb), np.nan, ya)
        sa, sb = np.nan_to_num(sa), np.nan_to_num(sb)
        obs = range(len(observations))
        layer_a = int(at["layer"][0]) if "layer" in at.columns else 0
        layer_b = int(bt["layer"][0]) if "layer" in bt.columns else 0
        yield Comparable(
            "macro_auroc",
            "",
            float(ratio),
            setting(layer_a, layer_b),
            images["patient_id"].to_numpy(),
            lambda w, y=ya, s=sa, o=obs: weighted_macro_auroc(y, {k: s[:, k] for k in o}, w),
            lambda w, y=ya, s=sb, o=obs: weighted_macro_auroc(y, {k: s[:, k] for k in o}, w),
        )


def _mean_columns(
    a: pl.DataFrame, b: pl.DataFrame, key: list[str], columns: Sequence[str], by: Sequence[str]
):
    """Per group of ``by`` (e.g. pattern, mask ratio): the mean of each per-sample column."""
    groups = a.select(by).unique().sort(by).rows() if by else [()]
    for values in groups:
        condition = pl.lit(True)
        for name, value in zip(by, values, strict=True):
            condition = condition & (pl.col(name) == value)
        joined = _aligned(a.filter(condition), b.filter(condition), key)
        if joined.height == 0:
            continue
        spec = dict(zip(by, values, strict=True))
        for column in columns:
            if column not in a.columns or column not in b.columns:
                continue
            va = joined[column].cast(pl.Float64).fill_null(np.nan).to_numpy()
            vb = joined[f"{column}_b"].cast(pl.Float64).fill_null(np.nan).to_numpy()
            if not (np.isfinite(va).any() and np.isfinite(vb).any()):
                continue
            yield Comparable(
                column,
                "",
                float(spec.get("mask_ratio", 0.0)),
                str(spec.get("pattern", "")),
                joined["patient_id"].to_numpy(),
                lambda w, v=va: weighted_nanmean(v, w),
                lambda w, v=vb: weighted_nanmean(v, w),
            )


def _retrieval(a: pl.DataFrame, b: pl.DataFrame | None, ks: Sequence[int] = (1, 5, 10)):
    """Recall@k per direction; ``b`` None: the analytic chance level of ``a``'s queries."""
    for direction in ("i2t", "t2i"):
        at = a.filter(pl.col("direction") == direction).sort("query_id")
        if b is None:
            images = a.filter(pl.col("direction") == "i2t")
            studies = sorted(set(images["study_id"].to_list()))
            study_index = np.array([studies.index(s) for s in images["study_id"].to_list()])
            ranks_a = at["rank"].to_numpy()
            groups = at["patient_id"].to_numpy()
            for k in ks:
                chance = chance_recall(study_index, len(studies), k, direction)
                yield Comparable(
                    f"{direction}_recall@{k}",
                    "",
                    0.0,
                    "",
                    groups,
                    lambda w, r=ranks_a, k=k: weighted_nanmean(r < k, w),
                    lambda w, c=chance: np.full(len(w), c),
                )
            continue
        bt = b.filter(pl.col("direction") == direction).sort("query_id")
        if at["query_id"].to_list() != bt["query_id"].to_list():
            raise ValueError(
                "retrieval ranked different TEST candidates on the two sides; evaluate both "
                "with the same max_test_rows"
            )
        ranks_a, ranks_b = at["rank"].to_numpy(), bt["rank"].to_numpy()
        for k in ks:
            yield Comparable(
                f"{direction}_recall@{k}",
                "",
                0.0,
                "",
                at["patient_id"].to_numpy(),
                lambda w, r=ranks_a, k=k: weighted_nanmean(r < k, w),
                lambda w, r=ranks_b, k=k: weighted_nanmean(r < k, w),
            )


def comparables(
    task: str, samples_a: pl.DataFrame, samples_b: pl.DataFrame | None, method_b: str = "model"
) -> Iterator[Comparable]:
    """The metrics of ``task`` to compare: arm a = ``samples_a``'s ``model`` rows.

    Args:
        task: Benchmark name.
        samples_a: Arm a's ``samples.parquet``.
        samples_b: Arm b's samples (another checkpoint's, or ``samples_a`` for a baseline);
            None for the analytic ``chance`` baseline of retrieval.
        method_b: ``model`` (another checkpoint) or the baseline's method name.
    """
    if task == "retrieval":
        yield from _retrieval(samples_a, None if method_b == "chance" else samples_b)
        return
    a = samples_a.filter(pl.col("method") == "model")
    b = samples_b.filter(pl.col("method") == method_b) if samples_b is not None else None
    if a.height == 0 or b is None or b.height == 0:
        return
    if task == "findings":

        def setting(layer_a: int, layer_b: int) -> str:
            if method_b != "model":
                return f"layer {layer_a}"
            return f"layer {layer_a} vs layer {layer_b}"

        yield from _findings(a, b, setting)
    elif task == "inpainting":
        yield from _mean_columns(
            a,
            b,
            ["image_id", "pattern", "mask_ratio"],
            ("psnr_vs_reconstruction", "psnr_vs_original", "masked_token_accuracy"),
            ("pattern", "mask_ratio"),
        )
    elif task == "report_generation":
        yield from _mean_columns(a, b, ["image_id"], ("rouge_l", "green"), ())
    else:
        raise ValueError(f"no paired comparison for task {task!r}")


@dataclass(frozen=True)
class EvaluatedTask:
    """One checkpoint's latest evaluation of one task (from ``eval_runs`` / ``eval_results``).

    Attributes:
        checkpoint_id: Partition key.
        task: Benchmark.
        run_id: Dagster run of the evaluation (changes on every re-evaluation).
        samples_path: Its per-sample outputs.
        eval_config_hash: Hash of its evaluation config.
        arm: ``stage1``, ``stage2``, ``stage1-continued`` or ``external``.
        family: The stage-1 checkpoint the arm descends from (its own path for a stage-1
            checkpoint or an unrelated one).
    """

    checkpoint_id: str
    task: str
    run_id: str
    samples_path: str
    eval_config_hash: str
    arm: str
    family: str


def _resolved(path: str | None) -> str:
    return str(Path(path).resolve()) if path else ""


def evaluated_tasks(catalog: Catalog) -> list[EvaluatedTask]:
    """Every (checkpoint, task) with results, its latest run, arm and stage-1 family."""
    if not catalog.path.exists():
        return []
    tables = {r[0] for r in catalog.read("SELECT table_name FROM information_schema.tables")}
    if not {"eval_results", "eval_runs"} <= tables:
        return []
    rows = catalog.read(
        """SELECT DISTINCT r.checkpoint_id, r.task, r.run_id, r.samples_path, r.eval_config_hash,
                  e.checkpoint_path, e.checkpoint_manifest
           FROM eval_results r JOIN eval_runs e USING (checkpoint_id, task, run_id)
           WHERE r.samples_path IS NOT NULL
           ORDER BY r.checkpoint_id, r.task"""
    )
    out = []
    for checkpoint_id, task, run_id, samples, config_hash, path, manifest_json in rows:
        manifest = json.loads(manifest_json or "{}")
        arm = str(manifest.get("arm") or ("external" if manifest.get("origin") else "unknown"))
        family = _resolved(manifest.get("init_checkpoint")) or _resolved(path)
        out.append(EvaluatedTask(checkpoint_id, task, run_id, samples, config_hash, arm, family))
    return out


def comparison_pairs(
    evaluated: Sequence[EvaluatedTask],
) -> list[tuple[EvaluatedTask, EvaluatedTask | None, str]]:
    """(a, b, method_b): checkpoint pairs within a stage-1 family, and checkpoint vs baseline.

    For two checkpoints ``a`` is the later arm (stage 2 before stage 1 continued before
    stage 1), so ``diff > 0`` means the later arm is better. For a baseline, ``b`` is ``a``'s
    own evaluation (same run, same images) and ``method_b`` the baseline's name.
    """

    def order(e: EvaluatedTask) -> tuple[int, str]:
        rank = ARM_ORDER.index(e.arm) if e.arm in ARM_ORDER else len(ARM_ORDER)
        return rank, e.checkpoint_id

    pairs: list[tuple[EvaluatedTask, EvaluatedTask | None, str]] = []
    by_task: dict[str, list[EvaluatedTask]] = {}
    for e in evaluated:
        by_task.setdefault(e.task, []).append(e)
    for task, items in sorted(by_task.items()):
        items = sorted(items, key=order)
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                if a.family == b.family:
                    pairs.append((a, b, "model"))
            for baseline in TASK_BASELINES.get(task, ()):
                pairs.append((a, a, baseline))
    return pairs


@dataclass(frozen=True)
class ComparisonRow:
    """One row of ``eval_comparisons`` (see ``EVAL_COMPARISONS_DDL``)."""

    checkpoint_a: str
    checkpoint_b: str
    kind: str
    arm_a: str
    arm_b: str
    task: str
    metric: str
    observation: str
    mask_ratio: float
    setting: str
    value_a: float | None
    value_b: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_le_zero: float | None
    n_patients: int
    n_boot: int
    seed: int
    eval_config_hash: str
    code_version: str
    run_id_a: str
    run_id_b: str

    def values(self, now: dt.datetime) -> list[Any]:
        """Insert values in DDL order, NaN as NULL."""
        out = []
        for value in asdict(self).values():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            out.append(value)
        return [*out, now]


def compare_pair(
    a: EvaluatedTask,
    b: EvaluatedTask | None,
    method_b: str,
    samples: Callable[[str], pl.DataFrame],
    n_boot: int,
    seed: int,
    code_version: str,
) -> list[ComparisonRow]:
    """All paired rows of one pair (``samples`` reads a ``samples.parquet`` by path)."""
    samples_a = samples(a.samples_path)
    other = samples_a if b is None or b is a else samples(b.samples_path)
    kind = "checkpoint" if method_b == "model" else "baseline"
    b = b or a
    config_hash = hashlib.sha256(
        json.dumps([a.eval_config_hash, b.eval_config_hash, n_boot, seed]).encode()
    ).hexdigest()[:16]
    rows = []
    for item in comparables(a.task, samples_a, other, method_b):
        est = paired_difference(item.groups, item.statistic_a, item.statistic_b, n_boot, seed)
        rows.append(
            ComparisonRow(
                checkpoint_a=a.checkpoint_id,
                checkpoint_b=b.checkpoint_id if kind == "checkpoint" else method_b,
                kind=kind,
                arm_a=a.arm,
                arm_b=b.arm if kind == "checkpoint" else "baseline",
                task=a.task,
                metric=item.metric,
                observation=item.observation,
                mask_ratio=item.mask_ratio,
                setting=item.setting,
                value_a=est.value_a,
                value_b=est.value_b,
                diff=est.diff,
                ci_low=est.ci_low,
                ci_high=est.ci_high,
                p_le_zero=est.p_le_zero,
                n_patients=est.n_patients,
                n_boot=est.n_boot,
                seed=seed,
                eval_config_hash=config_hash,
                code_version=code_version,
                run_id_a=a.run_id,
                run_id_b=b.run_id,
            )
        )
    return rows


def update_comparisons(
    catalog: Catalog, n_boot: int = 500, seed: int = 0, code_version: str = "unknown"
) -> dict[str, int]:
    """Bring ``eval_comparisons`` up to date with ``eval_results``.

    A pair is recomputed when either side was re-evaluated (another run id) or the bootstrap
    settings changed; pairs of checkpoints that no longer have results are removed. The table
    is replaced pair by pair in one transaction under the catalog lock.

    Returns:
        Counts: ``pairs``, ``recomputed``, ``kept``, ``rows``.
    """
    evaluated = evaluated_tasks(catalog)
    pairs = comparison_pairs(evaluated)
    existing: dict[tuple[str, str, str], tuple[str, str, int, int]] = {}
    tables = set()
    if catalog.path.exists():
        tables = {r[0] for r in catalog.read("SELECT table_name FROM information_schema.tables")}
    if "eval_comparisons" in tables:
        for ca, cb, task, ra, rb, nb, sd in catalog.read(
            "SELECT DISTINCT checkpoint_a, checkpoint_b, task, run_id_a, run_id_b, n_boot, seed "
            "FROM eval_comparisons"
        ):
            existing[(ca, cb, task)] = (ra, rb, nb, sd)
    cache: dict[str, pl.DataFrame] = {}

    def samples(path: str) -> pl.DataFrame:
        if path not in cache:
            cache[path] = pl.read_parquet(path)
        return cache[path]

    new_rows: list[ComparisonRow] = []
    wanted: set[tuple[str, str, str]] = set()
    stale: list[tuple[str, str, str]] = []
    kept = 0
    for a, b, method_b in pairs:
        key = (a.checkpoint_id, b.checkpoint_id if method_b == "model" else method_b, a.task)
        wanted.add(key)
        before = existing.get(key)
        if before == (a.run_id, b.run_id, n_boot, seed):
            kept += 1
            continue
        stale.append(key)
        new_rows.extend(compare_pair(a, b, method_b, samples, n_boot, seed, code_version))
    removed = [key for key in existing if key not in wanted]
    now = dt.datetime.now(dt.UTC)

    def write(con) -> int:
        con.execute(EVAL_COMPARISONS_DDL)
        for key in (*stale, *removed):
            con.execute(
                "DELETE FROM eval_comparisons WHERE checkpoint_a = ? AND checkpoint_b = ? "
                "AND task = ?",
                list(key),
            )
        if new_rows:
            width = len(new_rows[0].values(now))
            con.executemany(
                f"INSERT INTO eval_comparisons VALUES ({', '.join(['?'] * width)})",
                [r.values(now) for r in new_rows],
            )
        return int(con.execute("SELECT count(*) FROM eval_comparisons").fetchall()[0][0])

    total = catalog.write(write)
    return {"pairs": len(pairs), "recomputed": len(stale), "kept": kept, "rows": total}


def read_comparisons(catalog: Catalog) -> pl.DataFrame:
    """``eval_comparisons`` as a polars frame (empty when the table does not exist)."""
    if not catalog.path.exists():
        return pl.DataFrame()
    tables = {r[0] for r in catalog.read("SELECT table_name FROM information_schema.tables")}
    if "eval_comparisons" not in tables:
        return pl.DataFrame()
    with catalog.reader() as con:
        return pl.from_arrow(con.sql("SELECT * FROM eval_comparisons").to_arrow_table())
