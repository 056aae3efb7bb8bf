"""Report sections, labels and splits builders, and the checks that guard them."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.checks import PrevalenceConfig, label_prevalence_per_split, no_patient_in_two_splits
from cxr.curation import build_finding_labels, build_report_sections, column_name
from cxr.labeler import CheXpertLabeler
from cxr.splits import SplitRatios, build_split_manifest, hash_split, read_official_split
from pipelines.resources import StorageResource

REPORTS = {
    "stu_1": "FINDINGS: Large right pleural effusion.\nIMPRESSION: Right effusion.",
    "stu_2": "IMPRESSION: No acute cardiopulmonary process.",
    "stu_3": "Patient intubated, bilateral airspace opacities.",  # a note: no headers
    "stu_4": None,
    "stu_5": "COMPARISON: ___.\n",
}


@pytest.fixture
def storage(tmp_path):
    studies = pa.table(
        {
            "study_id": list(REPORTS),
            "patient_id": ["pat_a", "pat_a", "pat_b", "pat_c", "pat_d"],
            "report_text": list(REPORTS.values()),
        }
    )
    (tmp_path / "studies").mkdir()
    pq.write_table(studies, tmp_path / "studies" / "studies.parquet")
    images = pa.table(
        {"image_id": ["img_1", "img_2", "img_3"], "study_id": ["stu_1", "stu_1", "stu_2"]}
    )
    pq.write_table(images, tmp_path / "studies" / "study_images.parquet")
    return StorageResource(root=str(tmp_path))


def test_sections_text_sources_and_labels(storage, tmp_path):
    curation = tmp_path / "curation"
    curation.mkdir()
    result = build_report_sections(
        storage.path("studies", "studies.parquet"), curation / "s.parquet", "findings_impression"
    )
    rows = {r["study_id"]: r for r in pq.read_table(curation / "s.parquet").to_pylist()}
    assert rows["stu_1"]["text_source"] == "findings+impression"
    assert rows["stu_1"]["sections_found"] == ["FINDINGS", "IMPRESSION"]
    assert rows["stu_2"]["text_source"] == "impression"
    assert rows["stu_3"]["text_source"] == "unsectioned"
    assert rows["stu_4"]["text_source"] == "no_report"
    assert rows["stu_5"]["text_source"] == "no_usable_text" and rows["stu_5"]["text"] == ""
    assert result["text_sources"]["no_usable_text"] == 1

    labels = build_finding_labels(
        curation / "s.parquet", curation / "l.parquet", CheXpertLabeler.from_rules_dir(), "u_zeros"
    )
    assert labels["num_studies"] == 5
    table = {r["study_id"]: r for r in pq.read_table(curation / "l.parquet").to_pylist()}
    assert table["stu_1"][column_name("Pleural Effusion")] == 1.0
    assert table["stu_2"][column_name("No Finding")] == 1.0
    assert table["stu_4"][column_name("No Finding")] is None  # no text, no labels
    with pytest.raises(ValueError, match="unknown uncertainty policy"):
        build_finding_labels(
            curation / "s.parquet",
            curation / "x.parquet",
            CheXpertLabeler.from_rules_dir(),
            "u_maybe",
        )


def test_hash_split_is_stable_and_follows_ratios():
    ratios = SplitRatios(0.7, 0.2, 0.1)
    patients = [f"pat_{i:05d}" for i in range(20000)]
    first = [hash_split(p, "seed", ratios) for p in patients]
    assert first == [hash_split(p, "seed", ratios) for p in patients]
    shares = {s: first.count(s) / len(first) for s in ("train", "validate", "test")}
    assert abs(shares["train"] - 0.7) < 0.02 and abs(shares["test"] - 0.1) < 0.01
    assert first != [hash_split(p, "other-seed", ratios) for p in patients]
    with pytest.raises(ValueError, match="sum to 1"):
        SplitRatios(0.8, 0.3, 0.1)


def test_official_split_file(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text(
        "dicom_id,study_id,subject_id,split\na,50000001,10000001,train\n"
        "b,50000002,10000001,train\nc,50000003,10000002,validate\n"
    )
    assert read_official_split(path, lambda s: f"pat_{s}") == {
        "pat_10000001": "train",
        "pat_10000002": "validate",
    }
    path.write_text("dicom_id,study_id,subject_id,split\na,1,10000001,train\nb,2,10000001,test\n")
    with pytest.raises(ValueError, match="both 'train' and 'test'"):
        read_official_split(path, lambda s: s)


def test_split_checks_pass_and_can_fail(storage, tmp_path):
    curation = tmp_path / "curation"
    curation.mkdir()
    build_split_manifest(
        storage.path("studies", "studies.parquet"),
        storage.path("studies", "study_images.parquet"),
        curation / "splits.parquet",
        "seed",
        SplitRatios(0.5, 0.25, 0.25),
    )
    assert no_patient_in_two_splits(storage=storage).passed
    splits = pq.read_table(curation / "splits.parquet").to_pylist()
    assert {r["study_id"] for r in splits} == set(REPORTS)
    leaked = [dict(r, split="test" if r["study_id"] == "stu_2" else "train") for r in splits]
    pq.write_table(pa.Table.from_pylist(leaked), curation / "splits.parquet")
    result = no_patient_in_two_splits(storage=storage)
    assert not result.passed and result.metadata["patients_in_several_splits"].value == 1

    # prevalence: all positives in test -> WARN
    many = [
        {
            "study_id": f"stu_{i}",
            "patient_id": f"pat_{i}",
            "split": "test" if i < 50 else "train",
            "image_ids": [],
            "split_source": "hash",
            "study_hash": "",
        }
        for i in range(200)
    ]
    pq.write_table(pa.Table.from_pylist(many), curation / "splits.parquet")
    from cxr.labeler import OBSERVATIONS

    labels = [
        {
            "study_id": f"stu_{i}",
            **{column_name(o): None for o in OBSERVATIONS},
            column_name("Edema"): 1.0 if i < 50 else None,
        }
        for i in range(200)
    ]
    pq.write_table(pa.Table.from_pylist(labels), curation / "finding_labels.parquet")
    warn = label_prevalence_per_split(config=PrevalenceConfig(), storage=storage)
    assert not warn.passed and warn.severity.value == "WARN"
