"""An unusable archive still shows its diagnosis.

A raw PACS-style export (``dicom-tree`` layout) of mixed modalities, derived at run time from the
real DICOMs in ``../shared/data/dicom`` (never committed): the five real chest radiographs plus
CT / MR / US / NM / PT / XA / MG copies, a skull CR, a structured report, a truncated file and a
file that is not DICOM at all. Most files are not chest radiographs, so the blocking
``decode_success_rate`` check fails and stops the run; the quarantine must still be
materialized, account for every file, and the failed check must say why by reason.
"""

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pydicom
import pytest
from pydicom.uid import generate_uid

from cxr.quarantine import counts_by_reason, summary_line, write_quarantine
from pipelines.definitions import defs
from pipelines.resources import (
    MLflowResource,
    PrivacyResource,
    RayResource,
    SourceResource,
    StorageResource,
)

REAL = {
    "rg1_uncr.dcm": "pydicom_data_RG1/RG1_UNCR.dcm",
    "rg1_j2kr.dcm": "pydicom_data_RG1/RG1_J2KR.dcm",
    "rg1_j2ki.dcm": "pydicom_data_RG1/RG1_J2KI.dcm",
    "siim.dcm": "torchxrayvision_tests/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "siim_mono1.dcm": "torchxrayvision_tests/Fake_MONOHR1.dcm",
}
BASE = REAL["siim.dcm"]  # 127 KB: the derived files stay small
OTHER_MODALITIES = {  # modality -> body part
    "CT": "CHEST",
    "MR": "BRAIN",
    "US": "ABDOMEN",
    "NM": "WHOLEBODY",
    "PT": "CHEST",
    "XA": "HEART",
    "MG": "BREAST",
}
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _derived(base: Path, out: Path, tag: str, **fields: str) -> None:
    ds = pydicom.dcmread(base)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["chexmix-quarantine-test", tag, "sop"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["chexmix-quarantine-test", tag, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["chexmix-quarantine-test", tag, "series"])
    for name, value in fields.items():
        setattr(ds, name, value)
    ds.save_as(out, enforce_file_format=True)


@pytest.fixture(scope="module")
def mixed_archive(tmp_path_factory, shared_data) -> tuple[Path, dict[str, str]]:
    """The archive and, per file name, the reason it must be quarantined ('' = usable)."""
    root = tmp_path_factory.mktemp("mixed_archive")
    export = root / "export"
    export.mkdir()
    expected: dict[str, str] = {}
    for name, rel in REAL.items():  # byte-for-byte copies
        shutil.copyfile(shared_data / "dicom" / rel, export / name)
        expected[name] = ""
    base = shared_data / "dicom" / BASE
    for modality, body_part in OTHER_MODALITIES.items():
        name = f"{modality.lower()}.dcm"
        _derived(base, export / name, modality, Modality=modality, BodyPartExamined=body_part)
        expected[name] = "non_cxr"
    _derived(base, export / "skull_cr.dcm", "skull", Modality="CR", BodyPartExamined="SKULL")
    expected["skull_cr.dcm"] = "non_cxr"
    sr = pydicom.dcmread(base)
    del sr.PixelData
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    sr.Modality = "SR"
    sr.SOPInstanceUID = generate_uid(entropy_srcs=["chexmix-quarantine-test", "sr"])
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.save_as(export / "report_sr.dcm", enforce_file_format=True)
    expected["report_sr.dcm"] = "non_image_sop_class"
    _derived(base, export / "truncated.dcm", "truncated")  # its own UIDs, then cut short
    (export / "truncated.dcm").write_bytes((export / "truncated.dcm").read_bytes()[:4096])
    expected["truncated.dcm"] = "truncated"
    (export / "notes.dcm").write_text("not a DICOM file: a note someone saved into the export\n")
    expected["notes.dcm"] = "not_dicom"
    return export, expected


@pytest.mark.integration
def test_failed_decode_gate_still_materializes_the_quarantine(mixed_archive, tmp_path):
    archive, expected = mixed_archive
    storage = tmp_path / "storage"
    definitions = defs()
    wanted = {"source_manifest", "studies", "cxr_images", "ingest_quarantine", "image_tokenizer"}
    assets = [a for a in definitions.assets if a.keys & {dg.AssetKey(k) for k in wanted}]
    checks = [
        c
        for c in definitions.asset_checks
        if next(iter(c.check_keys)).asset_key.to_user_string() in wanted
    ]
    result = dg.materialize(
        [*assets, *checks],
        resources={
            "source": SourceResource(root=str(archive), layout="dicom-tree"),
            "storage": StorageResource(root=str(storage)),
            "privacy": PrivacyResource(salt="quarantine-test-salt-0123456789"),
            "ray": RayResource(num_cpus=2),
            "mlflow_tracking": MLflowResource(),
        },
        selection=sorted(wanted),
        run_config={
            "ops": {"cxr_images": {"config": {"use_ray": False, "image_size": 64}}},
        },
        raise_on_error=False,
    )
    assert not result.success  # the blocking gate stopped the run ...
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"cxr_images", "ingest_quarantine"} <= materialized  # ... after the diagnosis exists
    assert "image_tokenizer" not in materialized  # downstream of the failed gate: skipped

    checks_by_name = {e.check_name: e for e in result.get_asset_check_evaluations()}
    gate = checks_by_name["decode_success_rate"]
    assert not gate.passed
    description = gate.description or ""
    assert "image files decoded" in description and "floor 90%" in description
    assert "4 of 15 image files decoded" in description
    for reason in ("non_cxr 8", "not_dicom 1", "truncated 1", "non_image_sop_class 1"):
        assert reason in description, description
    assert "ingest_quarantine" in description
    accounting = checks_by_name["every_file_accounted_for"]
    assert accounting.passed, accounting.metadata
    assert accounting.metadata["files_unaccounted"].value == 0

    # every file of the archive is either decoded or in the quarantine, with its reason
    catalog = duckdb.connect(str(storage / "catalog.duckdb"), read_only=True)
    quarantine = catalog.sql("SELECT * FROM ingest_quarantine").to_arrow_table().to_pylist()
    catalog.close()
    con = duckdb.connect()
    locations = dict(
        con.execute(
            f"SELECT file_id, rel_path FROM read_parquet('{storage}/private/locations.parquet')"
        ).fetchall()
    )
    decoded_files = {
        row[0]
        for row in con.execute(
            f"""SELECT si.file_id FROM read_parquet('{storage}/images/shard-*[0-9].parquet') i
                JOIN read_parquet('{storage}/studies/study_images.parquet') si USING (image_id)"""
        ).fetchall()
    }
    con.close()
    by_name: dict[str, set[str]] = {}
    for row in quarantine:
        by_name.setdefault(Path(locations[row["file_id"]]).name, set()).add(row["reason"])
    decoded_names = {Path(locations[f]).name for f in decoded_files}
    assert set(by_name) | decoded_names == set(expected)  # nothing missing, nothing extra
    for name, reason in expected.items():
        if reason:
            assert by_name.get(name) == {reason}, (name, by_name.get(name))
    # the SIIM image and its MONOCHROME1 twin share one SOPInstanceUID: the second copy is set
    # aside as a duplicate; the three RG1 encodings carry distinct instance UIDs and all decode
    assert len(decoded_names) == 4 and all(not expected[n] for n in decoded_names)
    real_rejects = {n: r for n, r in by_name.items() if not expected[n]}
    assert list(real_rejects.values()) == [{"duplicate_instance"}], real_rejects

    quarantine_meta = next(
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "ingest_quarantine"
    ).materialization.metadata
    assert quarantine_meta["reason/non_cxr"].value == 8
    assert quarantine_meta["num_quarantined"].value == len(quarantine)


def test_quarantine_of_nothing_is_an_empty_table(tmp_path):
    target = tmp_path / "q.parquet"
    assert write_quarantine([], target) == 0
    assert counts_by_reason([target]) == []
    assert summary_line([]) == "nothing quarantined"
    line = summary_line([("non_cxr", "cxr_images", 9), ("not_dicom", "manifest", 2)])
    assert line == "11 quarantined: non_cxr 9 (cxr_images), not_dicom 2 (manifest)"
