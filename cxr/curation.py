"""Report curation: sections and training text per study, then CheXpert-14 labels.

Both builders stream the studies table in batches and write one Parquet file atomically.
"""

from __future__ import annotations

import itertools
import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import pyarrow as pa
import pyarrow.parquet as pq

from cxr.duck import scratch_connection
from cxr.labeler import (
    OBSERVATIONS,
    UNCERTAINTY_POLICIES,
    CheXpertLabeler,
    apply_uncertainty_policy,
)
from cxr.reports import parse_report, training_text
from cxr.storage import atomic_path

CORE_SECTIONS = ("INDICATION", "HISTORY", "COMPARISON", "TECHNIQUE", "FINDINGS", "IMPRESSION")
BATCH_ROWS = 1024


def column_name(observation: str) -> str:
    """Snake-case column name of an observation ('Pleural Effusion' -> 'pleural_effusion')."""
    return re.sub(r"[^a-z0-9]+", "_", observation.lower()).strip("_")


SECTIONS_SCHEMA = pa.schema(
    [
        pa.field("study_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string()),
        pa.field("sections_found", pa.list_(pa.string()), nullable=False),
        *[pa.field(name.lower(), pa.string()) for name in CORE_SECTIONS],
        pa.field("other_sections_json", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("text_source", pa.string(), nullable=False),
    ]
)
LABELS_SCHEMA = pa.schema(
    [
        pa.field("study_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string()),
        pa.field("text_source", pa.string(), nullable=False),
        *[pa.field(column_name(o), pa.float32()) for o in OBSERVATIONS],
        *[pa.field(f"target_{column_name(o)}", pa.float32()) for o in OBSERVATIONS],
    ]
)


def section_row(
    study_id: str, patient_id: str | None, report: str | None, mode: str, unsectioned_full: bool
) -> dict[str, Any]:
    """One ``report_sections`` row: parsed sections and the text the model trains on."""
    parsed = parse_report(report or "")
    text, source = training_text(parsed, mode)
    if not text and unsectioned_full and not parsed.order and parsed.preamble.strip():
        text, source = parsed.preamble.strip(), "unsectioned"
    if report is None:
        source = "no_report"
    others = {k: v for k, v in parsed.sections.items() if k not in CORE_SECTIONS}
    return {
        "study_id": study_id,
        "patient_id": patient_id,
        "sections_found": list(parsed.order),
        **{name.lower(): parsed.sections.get(name) for name in CORE_SECTIONS},
        "other_sections_json": json.dumps(others, sort_keys=True) if others else None,
        "text": text,
        "text_source": source,
    }


def build_report_sections(
    studies_path: Path, out_path: Path, mode: str, unsectioned_full: bool = True
) -> dict[str, Any]:
    """Parse every study's report; return counts (text sources, section coverage)."""
    sources: Counter[str] = Counter()
    coverage: Counter[str] = Counter()
    total = 0
    studies = pq.ParquetFile(studies_path)
    with (
        atomic_path(out_path) as tmp,
        pq.ParquetWriter(tmp, SECTIONS_SCHEMA, compression="zstd") as writer,
    ):
        for batch in studies.iter_batches(
            batch_size=BATCH_ROWS, columns=["study_id", "patient_id", "report_text"]
        ):
            rows = [
                section_row(
                    r["study_id"], r["patient_id"], r["report_text"], mode, unsectioned_full
                )
                for r in batch.to_pylist()
            ]
            for row in rows:
                total += 1
                sources[row["text_source"]] += 1
                coverage.update(row["sections_found"])
            writer.write_table(pa.Table.from_pylist(rows, schema=SECTIONS_SCHEMA))
    return {"num_studies": total, "text_sources": dict(sources), "coverage": dict(coverage)}


def build_finding_labels(
    sections_path: Path, out_path: Path, labeler: CheXpertLabeler, policy: str
) -> dict[str, Any]:
    """Label every study's training text; return prevalence counts per observation."""
    if policy not in UNCERTAINTY_POLICIES:
        raise ValueError(f"unknown uncertainty policy {policy!r}; expected {UNCERTAINTY_POLICIES}")
    counts = {o: Counter() for o in OBSERVATIONS}
    total = 0
    sections = pq.ParquetFile(sections_path)
    with (
        atomic_path(out_path) as tmp,
        pq.ParquetWriter(tmp, LABELS_SCHEMA, compression="zstd") as writer,
    ):
        for batch in sections.iter_batches(
            batch_size=BATCH_ROWS, columns=["study_id", "patient_id", "text", "text_source"]
        ):
            rows = []
            for r in batch.to_pylist():
                labels = labeler.label(r["text"]) if r["text"] else dict.fromkeys(OBSERVATIONS)
                targets = apply_uncertainty_policy(labels, policy)
                total += 1
                for o in OBSERVATIONS:
                    counts[o][
                        {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}.get(
                            labels[o], "not_mentioned"
                        )
                    ] += 1
                rows.append(
                    {
                        "study_id": r["study_id"],
                        "patient_id": r["patient_id"],
                        "text_source": r["text_source"],
                        **{column_name(o): labels[o] for o in OBSERVATIONS},
                        **{f"target_{column_name(o)}": targets[o] for o in OBSERVATIONS},
                    }
                )
            writer.write_table(pa.Table.from_pylist(rows, schema=LABELS_SCHEMA))
    return {"num_studies": total, "counts": {o: dict(c) for o, c in counts.items()}}


def _csv_label(value: str) -> float | None:
    value = value.strip()
    return float(value) if value else None


def reference_agreement(labeler: CheXpertLabeler, rules_dir: Path) -> dict[str, Any]:
    """Exact-match of the labeler on the CheXpert labeler's 4 reference-labelled reports."""
    import csv

    with (Path(rules_dir) / "labeled_reports.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    exact = 0
    values = matched = 0
    for row in rows:
        predicted = labeler.label(row["Reports"])
        truth = {o: _csv_label(row[o]) for o in OBSERVATIONS}
        exact += predicted == truth
        values += len(OBSERVATIONS)
        matched += sum(predicted[o] == truth[o] for o in OBSERVATIONS)
    return {"reports": len(rows), "reports_exact": exact, "values": values, "values_equal": matched}


class _ParquetLabelRows(Sequence[dict[str, float | None]]):
    """Label dicts (observation -> value) read lazily, in file order, from Parquet columns.

    ``agreement`` iterates its inputs once per observation; streaming them keeps memory at one
    batch instead of every study's labels.
    """

    def __init__(self, path: Path, prefix: str) -> None:
        self.path, self.prefix = Path(path), prefix
        self.columns = [prefix + column_name(o) for o in OBSERVATIONS]
        self.length = pq.ParquetFile(self.path).metadata.num_rows

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict[str, float | None]]:
        for batch in pq.ParquetFile(self.path).iter_batches(BATCH_ROWS, columns=self.columns):
            yield from batch.rename_columns(list(OBSERVATIONS)).to_pylist()

    @overload
    def __getitem__(self, index: int) -> dict[str, float | None]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, float | None]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return list(itertools.islice(self, *index.indices(self.length)))
        position = index + self.length if index < 0 else index
        if not 0 <= position < self.length:
            raise IndexError(f"row {index} of {self.length}")
        return next(itertools.islice(self, position, None))


def ground_truth_agreement(
    labels_path: Path, truth_csv: Path, hash_study: Any
) -> list[dict[str, Any]]:
    """Per-observation agreement of ``finding_labels`` with a ground-truth labels CSV.

    The CSV has ``study_id`` (raw, as in the archive's paths) and the 14 observations with
    CheXpert values (1.0 / 0.0 / -1.0 / empty); ids are pseudonymised with ``hash_study`` to join.
    A study listed twice in the CSV counts with its last row. Memory stays bounded: the CSV is
    streamed into a temporary Parquet file, DuckDB joins it to the labels (spilling to disk past
    128 MB) and ``agreement`` (sums over pairs, so row order is free) reads the joined rows
    lazily, one batch at a time.
    """
    import csv

    from cxr.label_eval import agreement

    columns = [column_name(o) for o in OBSERVATIONS]
    named = list(zip(OBSERVATIONS, columns, strict=True))
    truth_schema = pa.schema(
        [("study_id", pa.string()), ("csv_row", pa.int64())] + [(c, pa.float64()) for c in columns]
    )
    with tempfile.TemporaryDirectory(prefix="chexmix-truth-") as tmp_dir:
        truth_path, joined_path = Path(tmp_dir) / "truth.parquet", Path(tmp_dir) / "joined.parquet"
        with (
            Path(truth_csv).open(newline="", encoding="utf-8") as handle,
            pq.ParquetWriter(truth_path, truth_schema) as writer,
        ):
            rows: list[dict[str, Any]] = []
            for number, row in enumerate(csv.DictReader(handle)):
                raw = row["study_id"].strip().lstrip("s")
                rows.append(
                    {
                        "study_id": hash_study(raw),
                        "csv_row": number,
                        **{column: _csv_label(row[o]) for o, column in named},
                    }
                )
                if len(rows) >= BATCH_ROWS:
                    writer.write_table(pa.Table.from_pylist(rows, schema=truth_schema))
                    rows = []
            writer.write_table(pa.Table.from_pylist(rows, schema=truth_schema))
        selected = ", ".join(f'l."{c}" AS "pred_{c}", t."{c}" AS "truth_{c}"' for c in columns)
        con = scratch_connection()
        con.execute("SET memory_limit = '128MB'")  # DuckDB spills the join instead of growing
        con.execute("SET preserve_insertion_order = false")  # agreement is order-free
        con.execute(f"SET temp_directory = '{Path(tmp_dir) / 'duckdb'}'")
        con.execute(
            f"""COPY (
                SELECT {selected}
                FROM read_parquet('{labels_path}') l
                JOIN (SELECT * FROM read_parquet('{truth_path}')
                      QUALIFY row_number() OVER (PARTITION BY study_id ORDER BY csv_row DESC) = 1
                     ) t USING (study_id)
            ) TO '{joined_path}' (FORMAT parquet, ROW_GROUP_SIZE {BATCH_ROWS})"""
        )
        con.close()
        preds = _ParquetLabelRows(joined_path, "pred_")
        refs = _ParquetLabelRows(joined_path, "truth_")
        if not len(preds):
            raise ValueError(f"no study of {labels_path} appears in {truth_csv}")
        return agreement(preds, refs)
