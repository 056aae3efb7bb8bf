"""Manifest scanning (incremental) and the studies join, on copies of real DICOMs."""

import os
import shutil

import duckdb
import pytest

from cxr.manifest import scan_source
from cxr.privacy import Pseudonymizer
from cxr.sources import ImagesCsvOptions, SourceSpec
from cxr.studies import build_studies

PSEUDO = Pseudonymizer("unit-test-salt-0123456789")
RG1 = "dicom/pydicom_data_RG1"
SIIM = "dicom/torchxrayvision_tests/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def scan(spec, out):
    return scan_source(spec, PSEUDO, out / "manifest.parquet", out / "locations.parquet")


def rows(path, sql="SELECT * FROM t"):
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{path}')")
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


@pytest.fixture
def tree(tmp_path, shared_data):
    root = tmp_path / "export"
    (root / "a").mkdir(parents=True)
    shutil.copyfile(shared_data / RG1 / "RG1_UNCR.dcm", root / "a" / "IM0001")
    shutil.copyfile(shared_data / SIIM, root / "a" / "IM0002.dcm")
    (root / "notes.txt").write_bytes(b"\x00\x01binary")
    return root


def test_manifest_reads_headers_hashes_and_pseudonymises(tree, tmp_path):
    result = scan(SourceSpec(root=tree, layout="dicom-tree"), tmp_path)
    assert (result.num_files, result.num_rescanned, result.num_reused) == (3, 3, 0)
    manifest = {r["kind"] + str(r["rows"]): r for r in rows(tmp_path / "manifest.parquet")}
    rg1 = manifest["dicom1955"]
    assert rg1["modality"] == "CR" and rg1["photometric"] == "MONOCHROME1"
    assert rg1["bits_stored"] == 15 and rg1["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    assert rg1["patient_id"] == PSEUDO.hash_id("patient", "9RG1")
    assert rg1["study_id"] == PSEUDO.hash_id("study", "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457")
    assert len(rg1["sha256"]) == 64 and rg1["header_status"] == "ok"
    text = str(rows(tmp_path / "manifest.parquet"))
    assert "9RG1" not in text and "1.3.6.1.4.1.5962" not in text and "IM0001" not in text
    locations = rows(tmp_path / "locations.parquet")
    assert sorted(r["rel_path"] for r in locations) == ["a/IM0001", "a/IM0002.dcm", "notes.txt"]


def test_rescan_reads_only_new_or_changed_files(tree, tmp_path, shared_data):
    spec = SourceSpec(root=tree, layout="dicom-tree")
    first = scan(spec, tmp_path)
    again = scan(spec, tmp_path)
    assert (again.num_rescanned, again.num_reused) == (0, 3)
    assert again.manifest_sha256 == first.manifest_sha256
    shutil.copyfile(shared_data / RG1 / "RG1_J2KR.dcm", tree / "a" / "IM0003")
    (tree / "notes.txt").write_text("FINDINGS: changed")
    os.utime(tree / "notes.txt", ns=(1, 1))
    (tree / "a" / "IM0002.dcm").unlink()
    third = scan(spec, tmp_path)
    assert (third.num_files, third.num_rescanned, third.num_reused, third.num_removed) == (
        3,
        2,
        1,
        1,
    )


def test_dicom_tree_studies_link_reports_by_uid_or_accession(tree, tmp_path):
    (tree / "exam Number.txt").write_text("FINDINGS: Clear lungs.\nIMPRESSION: Normal.")
    spec = SourceSpec(root=tree, layout="dicom-tree")
    scan(spec, tmp_path)
    result = build_studies(
        spec, PSEUDO, tmp_path / "manifest.parquet", tmp_path / "locations.parquet", tmp_path / "s"
    )
    studies = {r["study_id"]: r for r in rows(tmp_path / "s" / "studies.parquet")}
    rg1 = studies[PSEUDO.hash_id("study", "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457")]
    assert rg1["match_status"] == "matched" and "Clear lungs" in rg1["report_text"]
    assert rg1["views"] == ["PA"] and rg1["num_frontal"] == 1
    assert result.num_images_without_report == 1  # the SIIM study has no report
    rejected = rows(tmp_path / "s" / "rejected.parquet")
    assert [r["reason"] for r in rejected] == ["unreadable_report"]  # the binary notes.txt


def test_images_csv_layout_on_the_covid_collection(tmp_path, shared_data):
    spec = SourceSpec(
        root=shared_data / "covid_chestxray", layout="images-csv", images_csv=ImagesCsvOptions()
    )
    scan(spec, tmp_path)
    result = build_studies(
        spec, PSEUDO, tmp_path / "manifest.parquet", tmp_path / "locations.parquet", tmp_path / "s"
    )
    # 296 metadata rows, 291 distinct files (5 listed under two patients), 145 patients
    assert result.num_images == 296 and result.num_rejected == 0
    patients = rows(
        tmp_path / "s" / "studies.parquet", "SELECT count(DISTINCT patient_id) AS n FROM t"
    )[0]["n"]
    assert patients == 145
    assert result.num_reports_without_images == 0 and result.num_images_without_report == 0


def test_images_csv_lists_missing_and_unreferenced_files(tmp_path, shared_data):
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    for name in ("00000001_000.png", "00027426_000.png"):
        shutil.copyfile(shared_data / "nih_cxr14" / name, root / "images" / name)
    (root / "metadata.csv").write_text(
        "patientid,filename,view,clinical_notes\n"
        "1,00000001_000.png,PA,Cardiomegaly.\n"
        "2,missing.png,PA,No acute disease.\n"
    )
    spec = SourceSpec(root=root, layout="images-csv")
    scan(spec, tmp_path)
    build_studies(
        spec, PSEUDO, tmp_path / "manifest.parquet", tmp_path / "locations.parquet", tmp_path / "s"
    )
    rejected = rows(tmp_path / "s" / "rejected.parquet")
    details = sorted(r["detail"] for r in rejected)
    assert len(rejected) == 2 and all(r["reason"] == "unmatched_record" for r in rejected)
    assert "not found" in details[0] and "not referenced" in details[1]
    statuses = sorted(r["match_status"] for r in rows(tmp_path / "s" / "studies.parquet"))
    assert statuses == ["matched", "report_without_images"]
