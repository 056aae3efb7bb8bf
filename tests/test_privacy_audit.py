"""The privacy audit: a planted leak in every kind of output is caught; clean outputs pass."""

import csv
import datetime
import json
import sqlite3
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydicom.dataset import Dataset

from cxr.privacy_audit import (
    PATH_IMAGE,
    PATH_PATIENT,
    PATH_STUDY,
    Needle,
    NeedleMatcher,
    PrivacyAuditor,
    audit_outputs,
    header_needles,
    needles_from_source,
    path_needles,
    png_text_chunks,
    report_json,
)

NAME = "HARRIS^EMMA^JANE"
PATIENT_ID = "MRN8380681"
BIRTH_DATE = "20360716"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1111"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1111.2"
SOP_UID = "1.2.826.0.1.3680043.8.498.1111.2.3"
ACCESSION = "RX18176744"
INSTITUTION = "LAKESHORE COMMUNITY HOSPITAL"
PHYSICIAN = "CARTER^OLIVIA"
REL_PATH = "files/p13/p13912281/s52927207/dba8eac4-bf7025af-aba5d134-a11e44c1-13301436.dcm"
SECRETS = [NAME, PATIENT_ID, BIRTH_DATE, STUDY_UID, SOP_UID, ACCESSION, INSTITUTION, "13912281"]


def header() -> Dataset:
    ds = Dataset()
    ds.PatientName = NAME
    ds.PatientID = PATIENT_ID
    ds.OtherPatientIDs = ["OID77123456", "O88"]  # the short one is ignored
    ds.PatientBirthDate = BIRTH_DATE
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.SOPInstanceUID = SOP_UID
    ds.AccessionNumber = ACCESSION
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = PHYSICIAN
    ds.Modality = "CR"  # not identifying: never a needle
    return ds


@pytest.fixture
def needles() -> list[Needle]:
    return header_needles(header()) + path_needles(REL_PATH)


def audit(root: Path, needles: list[Needle], **kwargs):
    return audit_outputs(needles, root, **kwargs)


def hit_places(report) -> set[tuple[str, str, str, str]]:
    return {(h.where, h.location, h.source, h.needle_kind) for h in report.hits}


def test_needles_from_a_header_and_a_mimic_path(needles):
    by_kind: dict[str, set[str]] = {}
    for needle in needles:
        by_kind.setdefault(needle.kind, set()).add(needle.value)
    assert by_kind["PatientName"] == {NAME}
    assert by_kind["PatientName part"] == {"HARRIS", "EMMA", "JANE"}
    assert by_kind["ReferringPhysicianName part"] == {"CARTER", "OLIVIA"}
    assert by_kind["PatientBirthDate"] == {BIRTH_DATE, "2036-07-16"}
    assert by_kind["OtherPatientIDs"] == {"OID77123456"}
    assert by_kind[PATH_PATIENT] == {"p13912281", "13912281"}
    assert by_kind[PATH_STUDY] == {"s52927207", "52927207"}
    assert by_kind[PATH_IMAGE] == {"dba8eac4-bf7025af-aba5d134-a11e44c1-13301436"}
    assert {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"} <= set(by_kind)
    assert "CR" not in {n.value for n in needles}
    assert all(n.value not in str(n) and n.value not in repr(n) for n in needles)


def test_matcher_respects_word_and_uid_boundaries(needles):
    matcher = NeedleMatcher(needles)
    texts = [
        "pat_3f2a13912281e0c9",  # the numeric id inside a hex pseudonym is not a leak
        f"{STUDY_UID}9",  # a longer UID is another UID
        f"seen at {INSTITUTION.lower()}",  # whole values match case-insensitively
        "harris",  # name parts match only as written in the header
        "subject 13912281 was",
        f"uid={SERIES_UID}.",
    ]
    found = [{(n.kind, n.value) for n in hits} for hits in matcher.find(texts)]
    assert found[0] == set() and found[1] == set() and found[3] == set()
    assert found[2] == {("InstitutionName", INSTITUTION)}
    assert found[4] == {(PATH_PATIENT, "13912281")}
    # the study UID is a prefix of the series UID, followed by ".2": not a hit of its own
    assert found[5] == {("SeriesInstanceUID", SERIES_UID)}


def test_clean_outputs_pass(tmp_path, needles):
    root = tmp_path / "storage"
    (root / "tables").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "patient_id": ["pat_3f2a13912281e0c9aa", "pat_0000"],
                "subject": pa.array([1, 2], pa.int64()),
                "pixels": [b"HARRIS^EMMA^JANE", b""],  # pixel columns are not text
            }
        ),
        root / "tables" / "clean.parquet",
    )
    (root / "notes.md").write_text("Modality CR, 128 px, sha256 e3b0c44298fc1c149afbf4c8996fb924\n")
    report = audit(root, needles, events=[("event 0", "STEP_SUCCESS cxr_images")])
    assert report.passed, report_json(report)
    assert report.files_scanned == 2 and report.events_scanned == 1
    assert report.needles_by_kind["PatientName part"] == 3


def test_private_zone_is_not_scanned(tmp_path, needles):
    root = tmp_path / "storage"
    (root / "private").mkdir(parents=True)
    pq.write_table(pa.table({"rel_path": [REL_PATH]}), root / "private" / "locations.parquet")
    assert audit(root, needles).passed


def test_parquet_cells_integers_dates_and_metadata_are_scanned(tmp_path, needles):
    root = tmp_path / "storage"
    root.mkdir()
    table = pa.table(
        {
            "note": ["fine", f"patient {NAME} was seen"],
            "tags": [["a"], [f"acc {ACCESSION}"]],
            "subject_id": pa.array([1, 13912281], pa.int64()),
            "birth": pa.array([None, datetime.date(2036, 7, 16)], pa.date32()),
        }
    ).replace_schema_metadata({b"chexmix.source": f"study {STUDY_UID}".encode()})
    pq.write_table(table, root / "leak.parquet")
    report = audit(root, needles)
    places = hit_places(report)
    assert ("leak.parquet", "column note", "parquet_cell", "PatientName") in places
    assert ("leak.parquet", "column note", "parquet_cell", "PatientName part") in places
    assert ("leak.parquet", "column tags", "parquet_cell", "AccessionNumber") in places
    assert ("leak.parquet", "column subject_id", "parquet_cell", PATH_PATIENT) in places
    assert ("leak.parquet", "column birth", "parquet_cell", "PatientBirthDate") in places
    assert (
        "leak.parquet",
        "key-value metadata chexmix.source",
        "parquet_metadata",
        "StudyInstanceUID",
    ) in places


def test_json_text_and_log_files_are_scanned(tmp_path, needles):
    root = tmp_path / "storage"
    (root / "tokens").mkdir(parents=True)
    (root / "tokens" / "_manifest.json").write_text(json.dumps({"accession": ACCESSION}))
    (root / "run.log").write_text(f"reading files/p13/p13912281/s52927207 ... {PATIENT_ID}\n")
    report = audit(root, needles)
    places = hit_places(report)
    assert ("tokens/_manifest.json", "text", "text", "AccessionNumber") in places
    assert ("run.log", "text", "text", PATH_PATIENT) in places
    assert ("run.log", "text", "text", PATH_STUDY) in places
    assert ("run.log", "text", "text", "PatientID") in places


def test_png_text_chunks_are_scanned(tmp_path, needles):
    root = tmp_path / "storage"
    root.mkdir()
    info = PngInfo()
    info.add_text("Comment", f"patient {PATIENT_ID}")
    info.add_text("Source", f"study {STUDY_UID}", zip=True)  # zTXt
    info.add_itxt("Author", f"Dr {PHYSICIAN}", zip=True)  # compressed iTXt
    Image.new("L", (8, 8)).save(root / "preview.png", pnginfo=info)
    chunks = dict(png_text_chunks((root / "preview.png").read_bytes()))
    assert set(chunks) == {"tEXt Comment", "zTXt Source", "iTXt Author"}
    places = hit_places(audit(root, needles))
    assert ("preview.png", "tEXt Comment", "png_text", "PatientID") in places
    assert ("preview.png", "zTXt Source", "png_text", "StudyInstanceUID") in places
    assert ("preview.png", "iTXt Author", "png_text", "ReferringPhysicianName") in places


def test_duckdb_tables_and_views_are_queried(tmp_path, needles):
    root = tmp_path / "storage"
    root.mkdir()
    catalog = tmp_path / "catalog.duckdb"  # outside the root: only the SQL scan sees it
    con = duckdb.connect(str(catalog))
    con.execute("CREATE TABLE lineage (asset VARCHAR, inputs VARCHAR[], n BIGINT)")
    con.execute("INSERT INTO lineage VALUES ('x', ['ok', ?], 1)", [f"file of {SOP_UID}"])
    con.execute(f"CREATE VIEW v AS SELECT '{ACCESSION}' AS a")
    con.close()
    report = audit(root, needles, catalog_path=catalog)
    places = hit_places(report)
    assert ("<catalog>", "table lineage column inputs", "duckdb", "SOPInstanceUID") in places
    assert ("<catalog>", "view v sql", "duckdb", "AccessionNumber") in places
    assert report.tables_scanned == 1


def test_mlflow_sqlite_and_artifacts_are_scanned(tmp_path, needles):
    root = tmp_path / "storage"
    root.mkdir()
    mlflow_dir = tmp_path / "mlruns"  # a store outside the storage root
    (mlflow_dir / "artifacts").mkdir(parents=True)
    con = sqlite3.connect(mlflow_dir / "mlflow.db")
    con.execute("CREATE TABLE params (key TEXT, value TEXT, run_uuid TEXT)")
    con.execute("INSERT INTO params VALUES ('source', ?, 'r1')", [f"born {BIRTH_DATE}"])
    con.commit()
    con.close()
    (mlflow_dir / "artifacts" / "weights.bin").write_bytes(
        b"\x00\x01\x02" * 50 + f"name={NAME}".encode() + b"\xff\x00" * 50
    )
    report = audit(root, needles, mlflow_dir=mlflow_dir)
    places = hit_places(report)
    db = "<mlflow>/mlflow.db"
    assert (db, "table params column value", "sqlite", "PatientBirthDate") in places
    weights = "<mlflow>/artifacts/weights.bin"
    assert (weights, "bytes", "binary_strings", "PatientName") in places


def test_event_log_texts_are_scanned_and_hits_are_masked(tmp_path, needles):
    root = tmp_path / "storage"
    root.mkdir()
    events = [("event 0", "ok"), ("event 1", f"failed to read {REL_PATH}")]
    report = audit(root, needles, events=events)
    kinds = {h.needle_kind for h in report.hits}
    assert {PATH_PATIENT, PATH_STUDY, PATH_IMAGE} <= kinds
    assert all(h.where == "<event log>" and h.location == "event 1" for h in report.hits)
    shown = report_json(report) + repr(report) + report.summary()
    for secret in [*SECRETS, "p13912281", "dba8eac4-bf7025af"]:
        assert secret not in shown


def test_large_binaries_are_scanned_up_to_a_limit(tmp_path, needles):
    root = tmp_path / "storage"
    root.mkdir()
    (root / "big.bin").write_bytes(b"\x00" * 2048 + ACCESSION.encode() + b"\x00" * 10)
    auditor = PrivacyAuditor(needles, binary_limit_bytes=1024)
    auditor.scan_tree(root)
    report = auditor.result()
    assert report.passed and "only the first" in report.skipped[0]
    assert not audit(root, needles).passed


def test_needles_are_read_back_from_the_source(tmp_path):
    from cxr.synthetic import generate_archive

    archive = tmp_path / "archive"
    generate_archive(archive, num_studies=3, seed=5, bad_files=False, size_scale=0.25)
    rel_paths = sorted(
        p.relative_to(archive).as_posix() for p in (archive / "files").rglob("*") if p.is_file()
    )
    storage = tmp_path / "storage"
    (storage / "private").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {"file_id": [f"fil_{i:04d}" for i in range(len(rel_paths))], "rel_path": rel_paths}
        ),
        storage / "private" / "locations.parquet",
    )
    needles, headers_read = needles_from_source(storage, archive, sample_size=0)
    with open(archive / "ground_truth" / "images.csv") as handle:
        assert headers_read == len(list(csv.DictReader(handle)))
    values = {n.value for n in needles}
    phi = json.loads((archive / "ground_truth" / "phi.json").read_text())
    for category, strings in phi.items():
        if category != "free_text":  # free text is not an identifier field
            assert set(strings) <= values, category
    sampled, _ = needles_from_source(storage, archive, sample_size=2)
    assert 0 < len(sampled) < len(needles)


@pytest.mark.integration
def test_privacy_audit_check_passes_on_a_demo_run(tmp_path):
    """The asset check on a real run: outputs, catalog, MLflow store and event log are clean."""
    from pipeline_setup import local_resources, tiny_data_ops

    from cxr.synthetic import generate_archive
    from pipelines.definitions import defs

    archive = tmp_path / "archive"
    generate_archive(archive, num_studies=6, seed=11, size_scale=0.5)
    definitions = defs()
    resources = local_resources(archive, tmp_path / "storage", "audit-salt-0123456789abcdef")
    result = dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        resources=resources,
        selection=dg.AssetSelection.groups("ingest", "curation", "tokenization"),
        run_config={
            "ops": {
                **tiny_data_ops(images_per_shard=4),
                "cxr_images_decode_success_rate": {"config": {"min_success_rate": 0.3}},
                "token_shards_privacy_audit": {"config": {"sample_files": 0}},
            }
        },
        raise_on_error=False,
    )
    evaluation = next(
        e for e in result.get_asset_check_evaluations() if e.check_name == "privacy_audit"
    )
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert evaluation.passed, meta
    assert meta["num_hits"] == 0 and meta["num_needles"] > 50
    assert meta["files_scanned"] > 20 and meta["tables_scanned"] > 5
    assert meta["events_scanned"] > 50
    phi = json.loads((archive / "ground_truth" / "phi.json").read_text())
    assert meta["needles_by_kind"]["PatientID"] == len(phi["patient_ids"])

    # the same check, alone, after a leak is planted in an output: an ERROR, masked
    leaked = phi["patient_ids"][0]
    (tmp_path / "storage" / "curation" / "notes.json").write_text(json.dumps({"mrn": leaked}))
    check = next(c for c in definitions.asset_checks if "privacy_audit" in str(c.check_keys))
    again = dg.materialize(
        [*definitions.assets, check],
        resources=resources,
        selection=dg.AssetSelection.checks(check),
        raise_on_error=False,
    )
    (evaluation,) = again.get_asset_check_evaluations()
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert meta["num_hits"] == 1 and meta["hits_by_kind"] == {"PatientID": 1}
    assert "curation/notes.json" in meta["hits"] and leaked not in meta["hits"]
