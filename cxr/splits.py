"""Patient-level train / validate / test splits: reproducible, salted, stable as data grows.

A patient's split is a pure function of (split salt, pseudonymous patient id, ratios), so a
patient never moves when new studies or patients arrive, and no patient can straddle two
splits. Users with an official split (MIMIC-CXR's ``mimic-cxr-2.0.0-split.csv``: ``dicom_id,
study_id, subject_id, split``) supply it instead; its subject ids are pseudonymised with the same
keyed hash the ingest uses, so they join.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr.duck import scratch_connection

SPLITS = ("train", "validate", "test")
_OFFICIAL_ALIASES = {
    "train": "train",
    "validate": "validate",
    "val": "validate",
    "valid": "validate",
    "validation": "validate",
    "test": "test",
}


@dataclass(frozen=True)
class SplitRatios:
    """Fractions of patients per split; must be non-negative and sum to 1."""

    train: float = 0.8
    validate: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        values = (self.train, self.validate, self.test)
        if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(
                f"split ratios must be >= 0 and sum to 1, got train={self.train} "
                f"validate={self.validate} test={self.test} (sum {sum(values):.4f})"
            )


def hash_split(patient_id: str, salt: str, ratios: SplitRatios) -> str:
    """The split of one patient: a uniform draw from sha256(salt, patient) against the ratios."""
    digest = hashlib.sha256(f"{salt}\0{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < ratios.train:
        return "train"
    if u < ratios.train + ratios.validate:
        return "validate"
    return "test"


def _open_text(path: Path) -> Iterator[str]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as handle:  # type: ignore[operator]
        yield from handle


def read_official_split(path: Path, hash_patient: Callable[[str], str]) -> dict[str, str]:
    """Patient pseudonym -> split from an official split CSV (MIMIC-CXR layout).

    Raises:
        ValueError: Missing columns, unknown split names, or a patient listed in two splits.
    """
    reader = csv.DictReader(_open_text(Path(path)))
    fields = set(reader.fieldnames or [])
    if not {"subject_id", "split"} <= fields:
        raise ValueError(
            f"{path} must have columns subject_id and split (MIMIC-CXR split CSV); got "
            f"{sorted(fields)}"
        )
    by_patient: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        split = _OFFICIAL_ALIASES.get(row["split"].strip().lower())
        if split is None:
            raise ValueError(f"{path}:{line}: unknown split {row['split']!r}; expected {SPLITS}")
        subject = row["subject_id"].strip().lstrip("p")
        patient = hash_patient(subject)
        previous = by_patient.setdefault(patient, split)
        if previous != split:
            raise ValueError(
                f"{path}:{line}: subject {subject} is in both {previous!r} and {split!r}; an "
                "official split must be patient-level"
            )
    return by_patient


def build_split_manifest(
    studies_path: Path,
    study_images_path: Path,
    out_path: Path,
    salt: str,
    ratios: SplitRatios,
    official: dict[str, str] | None = None,
) -> dict[str, int]:
    """Write the split manifest (one row per study) and return patients/studies per split.

    ``study_hash`` is a content hash of the study's inputs (report text and image ids), so a
    reader can tell which studies changed between two versions of the manifest.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxr.storage import atomic_path

    con = scratch_connection()
    reader = con.sql(
        f"""SELECT s.patient_id, s.study_id,
                   coalesce(list_sort(list(i.image_id) FILTER (i.image_id IS NOT NULL)),
                            []::VARCHAR[]) AS image_ids,
                   sha256(coalesce(any_value(s.report_text), '') || '|' ||
                          coalesce(string_agg(i.image_id, ',' ORDER BY i.image_id), ''))
                       AS study_hash
            FROM read_parquet('{studies_path}') s
            LEFT JOIN read_parquet('{study_images_path}') i USING (study_id)
            GROUP BY s.patient_id, s.study_id ORDER BY s.study_id"""
    ).to_arrow_reader(4096)
    schema = pa.schema(
        [
            ("patient_id", pa.string()),
            ("study_id", pa.string()),
            ("image_ids", pa.list_(pa.string())),
            ("split", pa.string()),
            ("split_source", pa.string()),
            ("study_hash", pa.string()),
        ]
    )
    counts: dict[str, int] = {f"{kind}/{s}": 0 for kind in ("studies", "patients") for s in SPLITS}
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as out:
        for batch in reader:
            rows = batch.to_pylist()
            for row in rows:
                patient = row["patient_id"]
                if official is not None and patient in official:
                    row["split"], row["split_source"] = official[patient], "official"
                else:
                    row["split"], row["split_source"] = hash_split(patient, salt, ratios), "hash"
                counts[f"studies/{row['split']}"] += 1
            out.write_table(pa.Table.from_pylist(rows, schema=schema))
    # A patient's split is a function of the patient, so patients per split = distinct patients
    # per split, counted by DuckDB from the file (no Python set of every patient id).
    patients = con.execute(
        f"""SELECT split, count(DISTINCT patient_id)
                          + (count(*) FILTER (WHERE patient_id IS NULL) > 0)::INTEGER
            FROM read_parquet('{out_path}') GROUP BY split"""
    ).fetchall()
    for split, num_patients in patients:
        counts[f"patients/{split}"] = num_patients
    con.close()
    return counts
