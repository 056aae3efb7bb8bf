"""Unit tests of the synthetic MIMIC-CXR-like archive (cxr.synthetic)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    AllTransferSyntaxes,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from cxr.errors import RejectReason
from cxr.synthetic import OBSERVATIONS, ArchiveSummary, generate_archive
from cxr.synthetic.__main__ import main
from cxr.synthetic.dicom_writer import (
    CR_IMAGE_STORAGE,
    DX_FOR_PRESENTATION,
    DicomVariant,
    HeaderFields,
    stored_sha256,
    write_radiograph,
)
from cxr.synthetic.phantom import RENDERABLE, RenderFinding, render_chest, sample_anatomy
from cxr.synthetic.reports import PATHOLOGIES

COMPRESSED = {str(RLELossless), str(JPEG2000Lossless), str(JPEGLSLossless)}
DCM_PATH = re.compile(r"^files/p(1\d)/p(1\d{7})/s(5\d{7})/[0-9a-f]{8}(?:-[0-9a-f]{8}){4}\.dcm$")
TXT_PATH = re.compile(r"^files/p(1\d)/p(1\d{7})/s(5\d{7})\.txt$")


@pytest.fixture(scope="module")
def default_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ArchiveSummary]:
    """The default archive (120 studies, seed 0); images at half size to keep tests fast."""
    root = tmp_path_factory.mktemp("synthetic") / "archive"
    return root, generate_archive(root, size_scale=0.5)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------
# Layout, determinism, summary


def test_layout_matches_mimic(default_archive: tuple[Path, ArchiveSummary]) -> None:
    root, summary = default_archive
    files = [p.relative_to(root).as_posix() for p in (root / "files").rglob("*") if p.is_file()]
    dcm = [f for f in files if f.endswith(".dcm")]
    txt = [f for f in files if f.endswith(".txt")]
    assert len(dcm) + len(txt) == len(files)
    for path in dcm:
        match = DCM_PATH.match(path)
        assert match, path
        assert match.group(2)[:2] == match.group(1)
    study_folders = {str(Path(p).parent) for p in dcm}
    for path in txt:
        match = TXT_PATH.match(path)
        assert match, path
        assert match.group(2)[:2] == match.group(1)
        assert path[: -len(".txt")] in study_folders
    assert len(txt) == len(study_folders) == summary.num_studies == 120
    assert len(dcm) == summary.num_images + summary.num_bad_files

    images = _read_csv(root / "ground_truth" / "images.csv")
    labels = _read_csv(root / "ground_truth" / "labels.csv")
    assert len(images) == summary.num_images and len(labels) == 120
    assert list(labels[0]) == ["subject_id", "study_id", *OBSERVATIONS]
    per_patient: dict[str, set[str]] = {}
    for row in labels:
        per_patient.setdefault(row["subject_id"], set()).add(row["study_id"])
    assert len(per_patient) == summary.num_patients
    assert {len(v) for v in per_patient.values()} <= {1, 2, 3}
    views_per_study: dict[str, int] = {}
    for row in images:
        views_per_study[row["study_id"]] = views_per_study.get(row["study_id"], 0) + 1
        assert row["path"].split("/")[-1] == f"{row['dicom_id']}.dcm"
    two_view = sum(v == 2 for v in views_per_study.values()) / len(views_per_study)
    assert 0.12 < two_view < 0.4
    normal = sum(row["No Finding"] == "1.0" for row in labels) / len(labels)
    assert 0.2 < normal < 0.55


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kwargs = {"num_studies": 5, "size_scale": 0.2}
    generate_archive(tmp_path / "a", seed=3, **kwargs)
    generate_archive(tmp_path / "b", seed=3, **kwargs)
    generate_archive(tmp_path / "c", seed=4, **kwargs)
    first, second = _tree_hashes(tmp_path / "a"), _tree_hashes(tmp_path / "b")
    assert first == second
    assert len(first) > 10
    assert _tree_hashes(tmp_path / "c") != first


def test_native_size_forces_dimensions(tmp_path: Path) -> None:
    summary = generate_archive(tmp_path, num_studies=2, bad_files=False, native_size=(300, 260))
    assert summary.num_bad_files == 0
    for row in _read_csv(tmp_path / "ground_truth" / "images.csv"):
        ds = dcmread(tmp_path / row["path"], stop_before_pixels=True)
        assert (ds.Rows, ds.Columns) == (300, 260)
    assert _read_csv(tmp_path / "ground_truth" / "bad_files.csv") == []


def test_cli_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(tmp_path / "cli"), "--studies", "2", "--seed", "1", "--size-scale", "0.15"]
    assert main([*args, "--no-bad-files"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "2 studies" in out[0] and "+0 bad files" in out[0]


# ------------------------------------------------------------------------------------------
# DICOM variants and pixels


def test_every_realism_variant_occurs(default_archive: tuple[Path, ArchiveSummary]) -> None:
    root, summary = default_archive
    seen: dict[str, set[object]] = {}

    def note(key: str, value: object) -> None:
        seen.setdefault(key, set()).add(value)

    for row in _read_csv(root / "ground_truth" / "images.csv"):
        ds = dcmread(root / row["path"], stop_before_pixels=True)
        note("modality", ds.Modality)
        note("sop", ds.SOPClassUID)
        note("view", ds.ViewPosition)
        note("body", ds.BodyPartExamined)
        note("pi", ds.PhotometricInterpretation)
        note("bits", ds.BitsStored)
        note("signed", ds.PixelRepresentation)
        note("ts", ds.file_meta.TransferSyntaxUID)
        assert ds.BitsAllocated == 16 and ds.HighBit == ds.BitsStored - 1
        assert ds.PatientOrientation and ds.ImageType and ds.StudyDescription
        assert ds.SeriesDescription and ds.ImageComments and ds.PatientName
        assert ds.PatientID.startswith("MRN") and ds.PatientID[3:] not in row["subject_id"]
        for keyword in (
            "OtherPatientIDs",
            "AccessionNumber",
            "InstitutionName",
            "ReferringPhysicianName",
            "PatientBirthDate",
            "StudyDate",
            "StudyTime",
        ):
            assert ds.get(keyword), keyword
        assert ds.SOPClassUID == {"CR": CR_IMAGE_STORAGE, "DX": DX_FOR_PRESENTATION}[ds.Modality]
        rescale = (float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0)))
        note("rescale", rescale != (1.0, 0.0))
        has_window, has_lut = "WindowCenter" in ds, "VOILUTSequence" in ds
        note("voi", (has_window, has_lut))
        if has_window:
            note("multi_window", ds["WindowCenter"].VM > 1)
        if has_lut:
            lut = ds.VOILUTSequence[0]
            assert len(lut.LUTDescriptor) == 3 and lut.LUTData
            note("lut_syntax", ds.file_meta.TransferSyntaxUID)
        assert row["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID
    assert seen["modality"] == {"CR", "DX"}
    assert seen["sop"] == {CR_IMAGE_STORAGE, DX_FOR_PRESENTATION}
    assert {"PA", "AP"} <= seen["view"] and seen["view"] & {"LL", "LATERAL"}
    assert seen["body"] == {"CHEST"}
    assert seen["pi"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["bits"] == {10, 12, 14, 15, 16}
    assert seen["signed"] == {0, 1}
    assert seen["ts"] == {
        ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless,
        JPEGLSLossless,
    }  # fmt: skip
    assert seen["rescale"] == {True, False}
    assert seen["voi"] == {(True, False), (False, True), (True, True), (False, False)}
    assert seen["multi_window"] == {True, False}
    assert ImplicitVRLittleEndian in seen["lut_syntax"]  # ambiguous LUT VRs must be resolved
    counts = summary.transfer_syntaxes
    assert counts["ExplicitVRLittleEndian"] == max(counts.values())


def test_compressed_files_decode_to_the_written_array(
    default_archive: tuple[Path, ArchiveSummary],
) -> None:
    root, _ = default_archive
    rows = _read_csv(root / "ground_truth" / "images.csv")
    checked = 0
    for row in rows:
        if row["transfer_syntax_uid"] in COMPRESSED or checked % 10 == 0:
            ds = dcmread(root / row["path"])
            assert stored_sha256(ds.pixel_array) == row["pixel_sha256"], row["path"]
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless,
                                    JPEG2000Lossless, JPEGLSLossless])  # fmt: skip
@pytest.mark.parametrize("signed", [False, True])
def test_writer_round_trips_exactly(tmp_path: Path, syntax: str, signed: bool) -> None:
    headers = HeaderFields(
        "DOE^JANE", "MRN1", "EMPI2", "20500101", "F", "060Y", "RX3", "TEST HOSPITAL",
        "WHO^DR", "1.2.3.1", "1.2.3.2", "1.2.3.3", "21100101", "120000", "1", "CHEST (PA)",
        "CHEST PA", 1, 1, "PA", ("L", "F"), "ACME", "X1", "comment", "comment", 0.4,
    )  # fmt: skip
    image = np.random.default_rng(0).random((96, 80), dtype=np.float32)
    variant = DicomVariant("CR", "MONOCHROME1", 16 if signed else 12, signed, (2.0, -1024.0),
                           "window", syntax)  # fmt: skip
    written = write_radiograph(tmp_path / "x.dcm", image, variant, headers,
                               np.random.default_rng(1))  # fmt: skip
    ds = dcmread(written.path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    pixels = ds.pixel_array
    assert pixels.dtype.kind == ("i" if signed else "u")
    assert stored_sha256(pixels) == written.pixel_sha256


def _display(ds: object) -> np.ndarray:
    """pydicom's own display chain: modality LUT -> VOI LUT/window -> invert if MONOCHROME1."""
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = values.max() - values
    return values


def _box(image: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> float:
    """Mean over a box given in phantom coordinates (height units, centred on the image)."""
    rows, cols = image.shape
    r0, r1 = int((0.5 + v0) * rows), int((0.5 + v1) * rows)
    c0, c1 = int(cols / 2 + u0 * rows), int(cols / 2 + u1 * rows)
    return float(image[r0:r1, c0:c1].mean())


def test_display_chain_shows_dark_lungs_for_mono1_and_mono2(
    default_archive: tuple[Path, ArchiveSummary],
) -> None:
    root, _ = default_archive
    checked: dict[str, int] = {}
    for row in _read_csv(root / "ground_truth" / "images.csv"):
        if row["view_position"] not in ("PA", "AP"):
            continue
        ds = dcmread(root / row["path"])
        shown = _display(ds)
        lungs = (_box(shown, -0.24, -0.14, -0.2, -0.06) + _box(shown, 0.14, 0.24, -0.2, -0.06)) / 2
        center = _box(shown, -0.03, 0.03, -0.25, -0.06)
        assert lungs < center, (row["path"], row["photometric"], row["voi"])
        checked[row["photometric"]] = checked.get(row["photometric"], 0) + 1
    assert checked.get("MONOCHROME1", 0) >= 5 and checked.get("MONOCHROME2", 0) >= 5


# ------------------------------------------------------------------------------------------
# Reports and labels

_MENTIONS = {
    "Enlarged Cardiomediastinum": [" mediastinum", "cardiomediastinum", "contour",
                                   "mediastinal configuration", "mediastinal silhouette",
                                   "pericardial silhouette"],
    "Cardiomegaly": ["cardiomegaly", "the heart", "heart size", "cardiac enlargement",
                     "cardiac size", "cardiac shadow", "cardiac contour", "cardiac silhouette",
                     "enlarged heart"],
    "Lung Opacity": ["opaci", "decreased translucency", "increased density", "airspace disease",
                     "air-space disease", "air space disease", "infiltrate", "infiltration",
                     "interstitial marking", "interstitial pattern", "interstitial lung",
                     "reticular pattern", "reticular marking", "reticulation",
                     "parenchymal scarring", "peribronchial thickening", "wall thickening",
                     "scar"],
    "Lung Lesion": ["mass", "nodular density", "nodular densities", "nodular opacit", "nodule",
                    "lump", "cavitary lesion", "carcinoma", "neoplasm", "tumor"],
    "Edema": ["edema", "heart failure", "chf", "vascular congestion", "pulmonary congestion",
              "indistinctness", "vascular prominence"],
    "Consolidation": ["consolidat"],
    "Pneumonia": ["pneumonia", "infection", "infectious"],
    "Atelectasis": ["atelecta", "collapse"],
    "Pneumothorax": ["pneumothora"],
    "Pleural Effusion": ["pleural fluid", "effusion"],
    "Pleural Other": ["pleural thickening", "fibrosis", "fibrothorax", "pleural scar",
                      "pleuro-parenchymal scar"],
    "Fracture": ["fracture"],
    "Support Devices": ["pacer", " line ", "lines", "picc", "tube", "valve", "catheter",
                        "pacemaker", "hardware", "arthroplast", "marker", "icd", "defib",
                        "device", "drain ", "plate", "screw", "cannula", "apparatus", "coil",
                        "support", "equipment", "mediport"],
}  # fmt: skip
_UNCERTAIN = re.compile(r"\b(possible|possibly|questionable|cannot exclude|may|could)\b")
_NEGATED_BEFORE = re.compile(r"\b(no|without|normal)\b")
_NEGATED_AFTER = re.compile(r"\b(is normal|are normal|within normal limits|normal in size)\b")


def _rule_labels(report: str) -> dict[str, float]:
    """A small CheXpert-style labeler: mention phrases + negation/uncertainty cues."""
    text = " ".join(report.lower().split())
    text = text.split("final report", 1)[1]
    text = re.sub(r"(indication|comparison):.*?(?=(technique|comparison|findings|impression):)",
                  " ", text)  # fmt: skip
    found: dict[str, list[float]] = {}
    for sentence in re.split(r"(?<!\d)\.(?!\d)|:", text):
        sentence = f" {sentence} "
        for observation, phrases in _MENTIONS.items():
            for phrase in phrases:
                for match in re.finditer(re.escape(phrase), sentence):
                    if phrase == "effusion" and "pericardial effusion" in sentence:
                        continue
                    before, after = sentence[: match.start()], sentence[match.start() :]
                    if _UNCERTAIN.search(before):
                        value = -1.0
                    elif _NEGATED_BEFORE.search(before) or _NEGATED_AFTER.search(after):
                        value = 0.0
                    else:
                        value = 1.0
                    found.setdefault(observation, []).append(value)
    return {
        obs: 1.0 if 1.0 in values else -1.0 if -1.0 in values else 0.0
        for obs, values in found.items()
    }


def test_labels_agree_with_reports(default_archive: tuple[Path, ArchiveSummary]) -> None:
    root, _ = default_archive
    styles = {"impression_only": 0, "wet_read": 0, "title_case": 0, "deid": 0}
    for row in _read_csv(root / "ground_truth" / "labels.csv"):
        subject, study = row["subject_id"], row["study_id"]
        report = (root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt").read_text()
        assert "FINAL REPORT" in report and re.search(r"IMPRESSION:|Impression:", report)
        styles["impression_only"] += not re.search(r"FINDINGS:|Findings:", report)
        styles["wet_read"] += report.lstrip().startswith("WET READ:")
        styles["title_case"] += "Impression:" in report
        styles["deid"] += "___" in report
        predicted = _rule_labels(report)
        for observation in OBSERVATIONS[1:]:
            expected = float(row[observation]) if row[observation] else None
            assert predicted.get(observation) == expected, (observation, row, report)
        if row["Pleural Effusion"] == "1.0":
            assert "effusion" in report.lower()
        abnormal = any(row[o] in ("1.0", "-1.0") for o in PATHOLOGIES)
        assert row["No Finding"] == ("" if abnormal else "1.0")
    assert all(count > 0 for count in styles.values()), styles
    assert styles["impression_only"] < 30 and styles["wet_read"] < 30


def test_labels_cover_every_value(default_archive: tuple[Path, ArchiveSummary]) -> None:
    root, _ = default_archive
    labels = _read_csv(root / "ground_truth" / "labels.csv")
    for observation in OBSERVATIONS[1:]:
        values = {row[observation] for row in labels}
        assert "1.0" in values, observation
    assert any(row[o] == "-1.0" for row in labels for o in OBSERVATIONS)
    assert any(row[o] == "0.0" for row in labels for o in OBSERVATIONS)


# ------------------------------------------------------------------------------------------
# PHI and bad files


def _header_text(ds: object) -> set[str]:
    values = set()
    for element in ds.iterall():
        if element.VR in ("OB", "OW", "SQ", "UN"):
            continue
        value = element.value
        items = value if isinstance(value, list | tuple) or element.VM > 1 else [value]
        values.update(str(v) for v in items)
        values.add(str(value))
    return values


def test_phi_strings_appear_in_headers(default_archive: tuple[Path, ArchiveSummary]) -> None:
    root, _ = default_archive
    phi = json.loads((root / "ground_truth" / "phi.json").read_text())
    for key in ("patient_names", "patient_name_components", "birth_dates", "patient_ids",
                "other_patient_ids", "accession_numbers", "institution_names",
                "referring_physician_names", "study_instance_uids", "series_instance_uids",
                "sop_instance_uids", "free_text"):  # fmt: skip
        assert phi.get(key), key
    values: set[str] = set()
    raw = []
    for path in (root / "files").rglob("*.dcm"):
        try:
            values |= _header_text(dcmread(path, stop_before_pixels=True))
        except Exception:  # a bad file that does not parse: look at its bytes
            raw.append(path.read_bytes().decode("latin-1"))
    blob = "\n".join([*values, *raw])
    for key, strings in phi.items():
        for string in strings:
            assert string in blob, (key, string)
    for name in phi["patient_names"]:
        assert all(part in phi["patient_name_components"] for part in name.split("^")
                   if len(part) >= 3)  # fmt: skip


def test_bad_files_fail_as_their_reason_implies(
    default_archive: tuple[Path, ArchiveSummary],
) -> None:
    root, summary = default_archive
    rows = _read_csv(root / "ground_truth" / "bad_files.csv")
    assert len(rows) == summary.num_bad_files
    reasons = {row["expected_reason"] for row in rows}
    assert reasons == {
        "truncated", "not_dicom", "missing_pixel_data", "non_image_sop_class",
        "unsupported_transfer_syntax", "undecodable", "non_cxr", "absurd_dimensions",
        "empty_image",
    }  # fmt: skip
    truncated_kinds = set()
    for row in rows:
        path, reason = root / row["path"], RejectReason(row["expected_reason"])
        assert DCM_PATH.match(row["path"])
        if reason is RejectReason.NOT_DICOM:
            with pytest.raises(InvalidDicomError):
                dcmread(path)
            continue
        if reason is RejectReason.TRUNCATED:
            try:
                dcmread(path, stop_before_pixels=True)
            except Exception:
                truncated_kinds.add("header")
                continue
            with pytest.raises(Exception):  # noqa: B017 - any decoder error will do
                _ = dcmread(path).pixel_array
            truncated_kinds.add("pixels")
            continue
        header = dcmread(path, stop_before_pixels=True)
        if reason is RejectReason.MISSING_PIXEL_DATA:
            assert "PixelData" not in dcmread(path) and header.Modality == "CR"
        elif reason is RejectReason.NON_IMAGE_SOP_CLASS:
            assert header.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.88.11",
                                          "1.2.840.10008.5.1.4.1.1.11.1")  # fmt: skip
            assert header.Modality in ("SR", "PR") and "PixelData" not in dcmread(path)
        elif reason is RejectReason.UNSUPPORTED_TRANSFER_SYNTAX:
            assert header.file_meta.TransferSyntaxUID not in AllTransferSyntaxes
            with pytest.raises(NotImplementedError):
                _ = dcmread(path).pixel_array
        elif reason is RejectReason.UNDECODABLE:
            assert header.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
            with pytest.raises(Exception):  # noqa: B017 - any decoder error will do
                _ = dcmread(path).pixel_array
        elif reason is RejectReason.NON_CXR:
            assert header.Modality not in ("CR", "DX") or header.BodyPartExamined != "CHEST"
        elif reason is RejectReason.ABSURD_DIMENSIONS:
            frames = int(header.get("NumberOfFrames", 1))
            assert (
                min(header.Rows, header.Columns) < 32 or frames > 1 or (header.SamplesPerPixel != 1)
            )
        elif reason is RejectReason.EMPTY_IMAGE:
            pixels = dcmread(path).pixel_array
            assert pixels.min() == pixels.max()
    assert truncated_kinds == {"header", "pixels"}


# ------------------------------------------------------------------------------------------
# Phantom


@pytest.fixture(scope="module")
def anatomy() -> object:
    """A patient without rotation, for geometric measurements."""
    return replace(sample_anatomy(np.random.default_rng(11)), rotation_deg=0.0, zoom=1.0,
                   shift_u=0.0, noise=0.004)  # fmt: skip


def _smooth_row(image: np.ndarray, v: float) -> np.ndarray:
    row = int((0.5 + v) * image.shape[0])
    return image[row - 2 : row + 3].mean(axis=0)


def test_cardiomegaly_widens_the_heart(anatomy: object) -> None:
    size = 256
    normal = render_chest(anatomy, (), size, size, seed=2)
    big = render_chest(anatomy, (RenderFinding("Cardiomegaly", severity=0.8),), size, size, seed=2)
    lung_level = float(_smooth_row(normal, -0.1)[int(size * 0.3)])  # lung field brightness

    inner = int(size * (anatomy.lung_lateral - 0.03))  # stay inside the lateral chest walls

    def heart_width(image: np.ndarray) -> int:
        profile = _smooth_row(image, anatomy.heart_v)[size // 2 - inner : size // 2 + inner]
        return int((profile > lung_level + 0.12).sum())

    assert heart_width(big) > heart_width(normal) * 1.2


def test_effusion_fills_the_costophrenic_angle(anatomy: object) -> None:
    size = 256
    effusion = (RenderFinding("Pleural Effusion", side="right", severity=0.6),)
    normal = render_chest(anatomy, (), size, size, seed=2)
    wet = render_chest(anatomy, effusion, size, size, seed=2)
    row = int((0.5 + anatomy.costophrenic_v - 0.1) * size)
    col = int(size / 2 - (anatomy.lung_lateral - 0.06) * size)
    region = (slice(row - 5, row + 5), slice(col - 5, col + 5))
    assert wet[region].mean() > normal[region].mean() + 0.08
    # The left (image right) costophrenic angle is untouched.
    mirror = (region[0], slice(size - col - 6, size - col + 6))
    assert abs(wet[mirror].mean() - normal[mirror].mean()) < 0.02


@pytest.mark.parametrize("observation", RENDERABLE)
def test_every_finding_changes_the_image_at_128px(anatomy: object, observation: str) -> None:
    finding = RenderFinding(observation, side="left", severity=0.7, zone="middle",
                            device="picc", seed=5)  # fmt: skip
    normal = render_chest(anatomy, (), 512, 512, seed=3)
    sick = render_chest(anatomy, (finding,), 512, 512, seed=3)

    def small(image: np.ndarray) -> np.ndarray:
        thumb = Image.fromarray(image).resize((128, 128), Image.Resampling.BILINEAR)
        return np.asarray(thumb)

    diff = np.abs(small(sick) - small(normal))
    assert diff.max() > 0.08, observation
    assert (diff > 0.03).sum() >= 4, observation


def test_lateral_view_differs_and_pneumothorax_is_lucent(anatomy: object) -> None:
    frontal = render_chest(anatomy, (), 256, 256, seed=1)
    lateral = render_chest(anatomy, (), 256, 256, view="lateral", seed=1)
    assert np.abs(frontal - lateral).mean() > 0.05
    ptx = render_chest(anatomy, (RenderFinding("Pneumothorax", side="left", severity=0.8),),
                       256, 256, seed=1)  # fmt: skip
    rows = slice(int((0.5 + anatomy.lung_top + 0.05) * 256), int((0.5 - 0.1) * 256))
    outer = int(256 / 2 + (anatomy.lung_lateral - 0.03) * 256)
    region = (rows, slice(outer - 4, outer + 2))
    assert ptx[region].mean() < frontal[region].mean()


def test_render_is_fast_float32_and_bounded(anatomy: object) -> None:
    findings = (RenderFinding("Pleural Effusion", side="bilateral"),
                RenderFinding("Support Devices", device="ett"))  # fmt: skip
    render_chest(anatomy, findings, 512, 512)
    start = time.perf_counter()
    for seed in range(3):
        image = render_chest(anatomy, findings, 512, 512, seed=seed)
    per_image = (time.perf_counter() - start) / 3
    assert image.dtype == np.float32 and image.shape == (512, 512)
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert per_image < 0.2, per_image
    big = render_chest(anatomy, (), 1500, 1250, seed=0)
    assert big.shape == (1500, 1250) and big.dtype == np.float32


def test_every_stated_finding_is_drawn_uncertain_ones_at_half_strength() -> None:
    """Labels and pixels agree under U-Ones: an uncertain mention is drawn, at half strength."""
    from cxr.synthetic.archive import _plan

    uncertain = 0
    for study in _plan(300, seed=0):
        stated = {f.observation: f.certainty for f in study.report.findings}
        drawn = {r.observation: r.strength for r in study.rendered}
        assert set(drawn) == set(stated)
        for observation, certainty in stated.items():
            assert drawn[observation] == (0.5 if certainty == "uncertain" else 1.0)
            uncertain += certainty == "uncertain"
    assert uncertain > 10
