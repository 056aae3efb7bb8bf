"""Seeded generator of a synthetic MIMIC-CXR-like archive: DICOM files, reports, ground truth.

Layout (as MIMIC-CXR)::

    out_root/files/p10/p10000032/s50414267/<dicom_id>.dcm
    out_root/files/p10/p10000032/s50414267.txt
    out_root/ground_truth/{labels.csv, images.csv, bad_files.csv, phi.json}

The ground truth is never read by the pipeline; tests and evaluations compare against it. The
same seed gives byte-identical files: every random choice comes from seeded generators and no
value depends on the clock.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid

from cxr.errors import RejectReason
from cxr.synthetic.dicom_writer import (
    CR_IMAGE_STORAGE,
    HeaderFields,
    base_dataset,
    encode_pixels,
    variant_for_index,
    write_radiograph,
)
from cxr.synthetic.phantom import (
    FRONTAL,
    LATERAL,
    Anatomy,
    RenderFinding,
    jitter_anatomy,
    render_chest,
    sample_anatomy,
)
from cxr.synthetic.reports import (
    FX,
    OBSERVATIONS,
    ExamInfo,
    Finding,
    StudyReport,
    compose_report,
    sample_findings,
)

LABEL_COLUMNS = ("subject_id", "study_id", *OBSERVATIONS)
IMAGE_COLUMNS = (
    "subject_id",
    "study_id",
    "dicom_id",
    "view_position",
    "modality",
    "photometric",
    "transfer_syntax_uid",
    "bits_stored",
    "rows",
    "cols",
    "findings_rendered",
    "render_strengths",
    "pixel_representation",
    "rescale_slope",
    "rescale_intercept",
    "voi",
    "window_center",
    "window_width",
    "pixel_sha256",
    "path",
)
BAD_FILE_COLUMNS = ("path", "expected_reason", "description")

PRIVATE_TRANSFER_SYNTAX = UID("1.3.6.1.4.1.99999.1.2.4.100")
"""A made-up vendor transfer syntax no decoder knows."""

_NATIVE_SIZES = (
    (512, 448),
    (576, 512),
    (640, 560),
    (704, 608),
    (768, 672),
    (832, 736),
    (896, 784),
    (1024, 896),
)
_NATIVE_WEIGHTS = np.array([3, 3, 3, 2, 2, 1, 1, 1], dtype=np.float64)

_FEMALE = (
    "EMMA", "OLIVIA", "SOPHIA", "ISABELLA", "CHARLOTTE", "AMELIA", "EVELYN", "ABIGAIL",
    "MARGARET", "DOROTHY", "PATRICIA", "BARBARA", "SUSAN", "DEBORAH", "GLORIA", "BEVERLY",
    "THERESA", "JOANNE", "VIRGINIA", "LORRAINE",
)  # fmt: skip
_MALE = (
    "OLIVER", "ELIJAH", "BENJAMIN", "HENRY", "ALEXANDER", "MICHAEL", "DANIEL", "MATTHEW",
    "JOSEPH", "SAMUEL", "RICHARD", "THOMAS", "CHARLES", "GEORGE", "RAYMOND", "WALTER",
    "HAROLD", "ARTHUR", "EUGENE", "FRANCIS",
)  # fmt: skip
_LAST = (
    "HARRIS", "MARTINEZ", "THOMPSON", "GARCIA", "ROBINSON", "CLARKE", "RODRIGUEZ", "WALKER",
    "HERNANDEZ", "NGUYEN", "SANCHEZ", "RAMIREZ", "TORRES", "FLORES", "RIVERA", "MITCHELL",
    "CARTER", "ROBERTS", "PHILLIPS", "EVANS", "TURNER", "PARKER", "COLLINS", "EDWARDS",
    "STEWART", "MORRIS", "MURPHY", "ROGERS", "MORGAN", "PETERSON", "COOPER", "BAILEY",
    "KOWALSKI", "OKAFOR", "LINDQVIST", "BRENNAN", "CASTILLO", "FITZGERALD", "MCALLISTER",
    "DOMINGUEZ",
)  # fmt: skip
_PHYSICIANS = (
    "WHITFIELD^ANNA", "OKONKWO^DAVID", "BERGSTROM^LENA", "MAHADEVAN^PRIYA", "CALLOWAY^JAMES",
    "ESPINOZA^RAFAEL", "HARTMANN^KLAUS", "DELACROIX^MARIE",
)  # fmt: skip
_INSTITUTIONS = (
    "MERCY VALLEY MEDICAL CENTER",
    "ST. AUGUSTINE GENERAL HOSPITAL",
    "NORTHGATE UNIVERSITY HOSPITAL",
    "LAKESHORE COMMUNITY HOSPITAL",
    "BRIARWOOD REGIONAL MEDICAL CENTER",
)
_EQUIPMENT = (
    ("AGFA", "CR 85-X"),
    ("FUJIFILM Corporation", "FCR CAPSULA XL"),
    ("Carestream Health", "DRX-Revolution"),
    ("Philips Medical Systems", "DigitalDiagnost"),
    ("GE Healthcare", "Definium 8000"),
)


@dataclass(frozen=True)
class ArchiveSummary:
    """What ``generate_archive`` wrote.

    Attributes:
        root: Archive root (``files/`` and ``ground_truth/`` are below it).
        num_patients: Number of patients.
        num_studies: Number of studies (one report each).
        num_images: Number of valid radiographs (bad files excluded).
        num_bad_files: Number of deliberately broken or out-of-policy files.
        transfer_syntaxes: Image count per transfer syntax keyword.
        photometric: Image count per PhotometricInterpretation.
        modalities: Image count per Modality.
        bits_stored: Image count per BitsStored.
    """

    root: Path
    num_patients: int
    num_studies: int
    num_images: int
    num_bad_files: int
    transfer_syntaxes: dict[str, int] = field(default_factory=dict)
    photometric: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, int] = field(default_factory=dict)
    bits_stored: dict[int, int] = field(default_factory=dict)

    def one_line(self) -> str:
        """A one-line human summary."""
        ts = ", ".join(f"{k} {v}" for k, v in sorted(self.transfer_syntaxes.items()))
        bits = ", ".join(f"{k}b {v}" for k, v in sorted(self.bits_stored.items()))
        mono = ", ".join(f"{k} {v}" for k, v in sorted(self.photometric.items()))
        mods = ", ".join(f"{k} {v}" for k, v in sorted(self.modalities.items()))
        return (
            f"{self.num_patients} patients, {self.num_studies} studies, {self.num_images} images"
            f" (+{self.num_bad_files} bad files) in {self.root} | {mods} | {mono} | {bits} | {ts}"
        )


@dataclass(frozen=True)
class _Patient:
    """A fake patient: path id, fake PHI and anatomy."""

    subject_id: int
    last: str
    first: str
    middle: str
    sex: str
    birth_year: int
    birth_md: str
    mrn: str
    other_id: str
    institution: str
    anatomy: Anatomy

    @property
    def pn(self) -> str:
        """DICOM PN as written in the headers."""
        return f"{self.last}^{self.first}" + (f"^{self.middle}" if self.middle else "")


@dataclass
class _Phi:
    """Every fake PHI string written into any header, by category."""

    values: dict[str, set[str]] = field(default_factory=dict)

    def add(self, category: str, *items: str) -> None:
        self.values.setdefault(category, set()).update(i for i in items if i)

    def add_headers(self, h: HeaderFields, written: bytes | None = None) -> None:
        """Records the PHI of ``h``; with ``written``, only values present in those bytes."""
        if written is not None:
            h = _only_written(h, written)
        self.add("patient_names", h.patient_name)
        self.add("patient_name_components", *(c for c in h.patient_name.split("^") if len(c) >= 3))
        self.add("birth_dates", h.birth_date)
        self.add("patient_ids", h.patient_id)
        self.add("other_patient_ids", h.other_patient_ids)
        self.add("accession_numbers", h.accession_number)
        self.add("institution_names", h.institution_name)
        self.add("referring_physician_names", h.referring_physician)
        self.add(
            "referring_physician_name_components",
            *(c for c in h.referring_physician.split("^") if len(c) >= 3),
        )
        self.add("study_instance_uids", h.study_uid)
        self.add("series_instance_uids", h.series_uid)
        self.add("sop_instance_uids", h.sop_uid)
        self.add("free_text", h.image_comments, h.study_comments)

    def to_json(self) -> str:
        return json.dumps({k: sorted(v) for k, v in sorted(self.values.items())}, indent=1)


def _only_written(h: HeaderFields, written: bytes) -> HeaderFields:
    """Blanks the string fields of ``h`` that do not occur in ``written`` (a cut file)."""
    blanks = {
        name: ""
        for name, value in vars(h).items()
        if isinstance(value, str) and value.encode("latin-1") not in written
    }
    return replace(h, **blanks)


@dataclass(frozen=True)
class _Study:
    """One planned study: ids, fake PHI, report and views."""

    patient: _Patient
    study_id: int
    study_date: str
    study_time: str
    accession: str
    physician: str
    equipment: tuple[str, str]
    modality: str
    frontal: str
    lateral_code: str
    report: StudyReport
    rendered: tuple[RenderFinding, ...]
    anatomy: Anatomy

    @property
    def folder(self) -> Path:
        """Study folder relative to the archive root."""
        subject = self.patient.subject_id
        return Path("files") / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{self.study_id}"


def _dicom_id(rng: np.random.Generator) -> str:
    """MIMIC-style image id: five dash-separated groups of 8 hex digits."""
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, size=5, dtype=np.uint64))


def _uid(seed: int, *parts: object) -> str:
    """Deterministic UID from the seed and a description of what it names."""
    return str(generate_uid(entropy_srcs=[f"chexmix-synthetic:{seed}", *map(str, parts)]))


def _unique_ints(rng: np.random.Generator, count: int, low: int, high: int) -> list[int]:
    """``count`` distinct integers in [low, high), in random order."""
    values: list[int] = []
    seen: set[int] = set()
    while len(values) < count:
        for x in rng.integers(low, high, size=count * 2):
            if int(x) not in seen and len(values) < count:
                seen.add(int(x))
                values.append(int(x))
    return values


def _render_findings(findings: Iterable[Finding]) -> tuple[RenderFinding, ...]:
    """What the phantom draws for the report's findings.

    Definite findings are drawn at full strength, uncertain ones ("possible", "cannot exclude")
    at half strength (images.csv records it). Every uncertain mention is drawn, so its label is
    consistent with the evaluation's default U-Ones policy (uncertain = positive): a target the
    pixels do not show would be label noise no model can learn.
    """
    rendered = []
    for f in findings:
        strength = 0.5 if f.certainty == "uncertain" else 1.0
        severity = f.severity
        if f.observation == "Lung Lesion":
            severity = float(np.clip((f.size_cm - 0.5) / 4.5, 0.0, 1.0))
        rendered.append(
            RenderFinding(
                observation=f.observation,
                side=f.side,
                severity=severity,
                strength=strength,
                zone=f.zone,
                device=f.device,
                seed=f.seed,
            )
        )
    return tuple(rendered)


def _plan(num_studies: int, seed: int) -> list[_Study]:
    """Draws patients and studies (ids, PHI, findings, reports) without rendering pixels."""
    rng = np.random.default_rng([seed, 0])
    counts: list[int] = []
    while sum(counts) < num_studies:
        counts.append(int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])))
    counts[-1] -= sum(counts) - num_studies
    subject_ids = sorted(_unique_ints(rng, len(counts), 10_000_000, 20_000_000))
    study_ids = _unique_ints(rng, num_studies, 50_000_000, 60_000_000)
    accessions = _unique_ints(rng, num_studies, 10_000_000, 100_000_000)
    mrns = _unique_ints(rng, len(counts), 1_000_000, 10_000_000)

    studies: list[_Study] = []
    for p_index, (subject_id, n_studies) in enumerate(zip(subject_ids, counts, strict=True)):
        sex = "F" if rng.random() < 0.5 else "M"
        first = str(rng.choice(_FEMALE if sex == "F" else _MALE))
        middle = chr(ord("A") + int(rng.integers(0, 26))) if rng.random() < 0.6 else ""
        age = int(rng.integers(22, 95))
        year = int(rng.integers(2110, 2190))
        patient = _Patient(
            subject_id=subject_id,
            last=str(rng.choice(_LAST)),
            first=first,
            middle=middle,
            sex=sex,
            birth_year=year - age,
            birth_md=f"{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
            mrn=f"MRN{mrns[p_index]}",
            other_id=f"EMPI{int(rng.integers(10_000_000, 100_000_000))}",
            institution=str(rng.choice(_INSTITUTIONS)),
            anatomy=sample_anatomy(rng),
        )
        day = int(rng.integers(0, 300))
        for k in range(n_studies):
            index = len(studies)
            day += int(rng.integers(1, 200)) if k else 0
            month, dom = 1 + (day // 28) % 12, 1 + day % 28
            findings = sample_findings(rng)
            portable = any(f.device in ("ett", "picc", "chest_tube") for f in findings)
            frontal = "AP" if rng.random() < (0.8 if portable else 0.25) else "PA"
            lateral = rng.random() < 0.25
            exam = ExamInfo(frontal=frontal, lateral=lateral, sex=sex, has_prior=k > 0)
            report = compose_report(findings, rng, exam)
            studies.append(
                _Study(
                    patient=patient,
                    study_id=study_ids[index],
                    study_date=f"{year + day // 336}{month:02d}{dom:02d}",
                    study_time=(
                        f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}"
                        f"{int(rng.integers(0, 60)):02d}.{int(rng.integers(0, 1000)):03d}"
                    ),
                    accession=f"RX{accessions[index]}",
                    physician=str(rng.choice(_PHYSICIANS)) + "^^DR",
                    equipment=_EQUIPMENT[int(rng.integers(len(_EQUIPMENT)))],
                    modality="DX" if index % 3 == 1 else "CR",
                    frontal=frontal,
                    lateral_code=("LATERAL" if index % 2 else "LL") if lateral else "",
                    report=report,
                    rendered=_render_findings(findings),
                    anatomy=jitter_anatomy(patient.anatomy, rng) if k else patient.anatomy,
                )
            )
    return studies


def _headers(
    study: _Study, seed: int, dicom_id: str, view: str, series_number: int, spacing: float
) -> HeaderFields:
    """Header values of one file of ``study``."""
    p = study.patient
    exam = (
        f"CHEST ({study.frontal} AND LAT)"
        if study.lateral_code
        else ("CHEST (PORTABLE AP)" if study.frontal == "AP" else "CHEST (PA)")
    )
    lateral = view in ("LL", "LATERAL")
    return HeaderFields(
        patient_name=p.pn,
        patient_id=p.mrn,
        other_patient_ids=p.other_id,
        birth_date=f"{p.birth_year}{p.birth_md}",
        sex=p.sex,
        age=f"{int(study.study_date[:4]) - p.birth_year:03d}Y",
        accession_number=study.accession,
        institution_name=p.institution,
        referring_physician=study.physician,
        study_uid=_uid(seed, "study", study.study_id),
        series_uid=_uid(seed, "series", study.study_id, series_number),
        sop_uid=_uid(seed, "sop", study.study_id, dicom_id),
        study_date=study.study_date,
        study_time=study.study_time,
        study_id=str(study.study_id)[-5:],
        study_description=exam,
        series_description=f"CHEST {'LAT' if lateral else study.frontal}",
        series_number=series_number,
        instance_number=1,
        view_position=view,
        patient_orientation=("A", "F") if lateral else ("L", "F"),
        manufacturer=study.equipment[0],
        model_name=study.equipment[1],
        image_comments=(
            f"Patient {p.last}, {p.first} positioned {'supine' if view == 'AP' else 'upright'}."
        ),
        study_comments=f"Ordered for {p.first} {p.last} (MRN {p.mrn}) at {p.institution}.",
        pixel_spacing_mm=spacing,
    )


def _native_size(
    rng: np.random.Generator, size_scale: float, native_size: tuple[int, int] | None
) -> tuple[int, int]:
    """Rows and columns of one image: a realistic size times ``size_scale``, or forced."""
    if native_size is not None:
        return int(native_size[0]), int(native_size[1])
    pick = int(rng.choice(len(_NATIVE_SIZES), p=_NATIVE_WEIGHTS / _NATIVE_WEIGHTS.sum()))
    rows, cols = _NATIVE_SIZES[pick]
    return max(64, round(rows * size_scale / 2) * 2), max(64, round(cols * size_scale / 2) * 2)


def _fmt(value: float | None) -> str:
    """CSV cell for an optional label/number (CheXpert convention: empty = not mentioned)."""
    return "" if value is None else f"{value:.1f}"


def _write_csv(path: Path, columns: Iterable[str], rows: Iterable[Iterable[object]]) -> None:
    """Writes a CSV with a header row (LF line endings, deterministic)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(list(columns))
        writer.writerows([list(r) for r in rows])


def generate_archive(
    out_root: Path,
    num_studies: int = 120,
    seed: int = 0,
    bad_files: bool = True,
    size_scale: float = 1.0,
    native_size: tuple[int, int] | None = None,
) -> ArchiveSummary:
    """Writes a synthetic MIMIC-CXR-like archive of real DICOM files and free-text reports.

    Args:
        out_root: Archive root; ``files/`` and ``ground_truth/`` are created below it.
        num_studies: Number of studies (patients have 1-3 studies each).
        seed: Everything (ids, PHI, findings, wording, pixels, encodings) follows from it.
        bad_files: Also write broken / out-of-policy files into real study folders.
        size_scale: Multiplies the default native sizes (512-1024 rows).
        native_size: Forces every radiograph to (rows, cols), e.g. (3000, 2500).

    Returns:
        Counts of what was written.
    """
    if num_studies < 1:
        raise ValueError(f"num_studies must be at least 1, got {num_studies}")
    if size_scale <= 0:
        raise ValueError(f"size_scale must be positive, got {size_scale}")
    out_root = Path(out_root)
    truth = out_root / "ground_truth"
    truth.mkdir(parents=True, exist_ok=True)
    studies = _plan(num_studies, seed)
    phi = _Phi()
    image_rows: list[list[object]] = []
    counters: dict[str, Counter] = {k: Counter() for k in ("ts", "pi", "mod", "bits")}
    ids_rng = np.random.default_rng([seed, 1])

    for study in studies:
        folder = out_root / study.folder
        folder.mkdir(parents=True, exist_ok=True)
        (out_root / study.folder.parent / f"s{study.study_id}.txt").write_text(study.report.text)
        views = [study.frontal] + ([study.lateral_code] if study.lateral_code else [])
        for series_number, view in enumerate(views, start=1):
            index = len(image_rows)
            dicom_id = _dicom_id(ids_rng)
            rows, cols = _native_size(ids_rng, size_scale, native_size)
            kind = LATERAL if view in ("LL", "LATERAL") else FRONTAL
            drawn = tuple(
                f for f in study.rendered if not (kind == LATERAL and f.observation == FX)
            )
            image = render_chest(
                study.anatomy, drawn, rows, cols, view=kind, seed=int(ids_rng.integers(2**31))
            )
            variant = variant_for_index(index, study.modality)
            headers = _headers(study, seed, dicom_id, view, series_number, 430.0 / rows)
            phi.add_headers(headers)
            written = write_radiograph(
                folder / f"{dicom_id}.dcm",
                image,
                variant,
                headers,
                np.random.default_rng([seed, 2, index]),
            )
            counters["ts"][variant.transfer_syntax.keyword] += 1
            counters["pi"][variant.photometric] += 1
            counters["mod"][variant.modality] += 1
            counters["bits"][variant.bits_stored] += 1
            image_rows.append(
                [
                    study.patient.subject_id,
                    study.study_id,
                    dicom_id,
                    view,
                    variant.modality,
                    variant.photometric,
                    str(variant.transfer_syntax),
                    variant.bits_stored,
                    written.rows,
                    written.cols,
                    ";".join(f.observation for f in drawn),
                    ";".join(f"{f.strength:g}" for f in drawn),
                    int(variant.signed),
                    "" if variant.rescale is None else f"{variant.rescale[0]:g}",
                    "" if variant.rescale is None else f"{variant.rescale[1]:g}",
                    variant.voi,
                    "" if written.window_center is None else f"{written.window_center:g}",
                    "" if written.window_width is None else f"{written.window_width:g}",
                    written.pixel_sha256,
                    written.path.relative_to(out_root).as_posix(),
                ]
            )

    bad_rows = _write_bad_files(out_root, studies, seed, phi) if bad_files else []
    _write_csv(
        truth / "labels.csv",
        LABEL_COLUMNS,
        (
            [s.patient.subject_id, s.study_id, *(_fmt(s.report.labels[o]) for o in OBSERVATIONS)]
            for s in studies
        ),
    )
    _write_csv(truth / "images.csv", IMAGE_COLUMNS, image_rows)
    _write_csv(truth / "bad_files.csv", BAD_FILE_COLUMNS, bad_rows)
    (truth / "phi.json").write_text(phi.to_json() + "\n")
    return ArchiveSummary(
        root=out_root,
        num_patients=len({s.patient.subject_id for s in studies}),
        num_studies=len(studies),
        num_images=len(image_rows),
        num_bad_files=len(bad_rows),
        transfer_syntaxes=dict(sorted(counters["ts"].items())),
        photometric=dict(sorted(counters["pi"].items())),
        modalities=dict(sorted(counters["mod"].items())),
        bits_stored=dict(sorted(counters["bits"].items())),
    )


# --------------------------------------------------------------------------------------------
# Bad files


def _small_chest(anatomy: Anatomy, size: int = 128) -> np.ndarray:
    """A small normal phantom for bad files that still need plausible pixels."""
    return render_chest(anatomy, (), size, size, seed=1)


def _cr_dataset(headers: HeaderFields, image: np.ndarray, body_part: str = "CHEST") -> Dataset:
    """A minimal valid 12-bit MONOCHROME2 CR dataset holding ``image`` ([0, 1] floats)."""
    ds = base_dataset(headers, CR_IMAGE_STORAGE, "CR")
    ds.BodyPartExamined = body_part
    ds.ViewPosition = headers.view_position
    ds.PatientOrientation = list(headers.patient_orientation)
    ds.ImageComments = headers.image_comments
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape[-2], image.shape[-1]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    stored = np.rint(np.clip(image, 0, 1) * 4000 + 40).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _to_bytes(ds: Dataset, **kwargs: bool) -> bytes:
    """Serialises a dataset as a DICOM file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, **kwargs)
    return buffer.getvalue()


def _bad_truncated_pixels(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    ds = _cr_dataset(h, _small_chest(a, 256))
    data = _to_bytes(ds)
    return data[: len(data) - 256 * 256], "valid CR whose PixelData is cut in half"


def _bad_truncated_header(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    ds = _cr_dataset(h, _small_chest(a))
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "71020", "C4", "CHEST 2 VIEWS"
    ds.ProcedureCodeSequence = DicomSequence([code])
    data = _to_bytes(ds)
    marker = data.find(b"\x08\x00\x32\x10SQ")  # (0008,1032) ProcedureCodeSequence, explicit VR
    if marker < 0:
        raise RuntimeError("ProcedureCodeSequence not found in the serialised dataset")
    return data[: marker + 10], "file cut inside the header, within a sequence's length field"


def _bad_not_dicom_png(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    Image.fromarray((_small_chest(a) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue(), "a PNG image saved with a .dcm extension"


def _bad_not_dicom_text(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    text = "PACS EXPORT FAILED\nerror 0xC210: association aborted by peer\n"
    return text.encode(), "a text error log saved with a .dcm extension"


def _bad_missing_pixels(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    ds = _cr_dataset(h, _small_chest(a))
    del ds.PixelData
    return _to_bytes(ds), "CR image object with an Image Pixel module but no PixelData"


def _bad_sr(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    ds = base_dataset(h, "1.2.840.10008.5.1.4.1.1.88.11", "SR")
    ds.ValueType = "CONTAINER"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "18748-4", "LN"
    concept.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = DicomSequence([concept])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.TextValue = "Chest radiograph reviewed; see final report."
    ds.ContentSequence = DicomSequence([item])
    return _to_bytes(ds), "Basic Text SR document (no pixels)"


def _bad_gsps(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    ds = base_dataset(h, "1.2.840.10008.5.1.4.1.1.11.1", "PR")
    ds.ContentLabel = "ANNOTATION"
    ds.ContentDescription = "Grayscale softcopy presentation state"
    ds.PresentationCreationDate = h.study_date
    ds.PresentationCreationTime = h.study_time
    ds.PresentationLUTShape = "IDENTITY"
    return _to_bytes(ds), "Grayscale Softcopy Presentation State (no pixels)"


def _bad_jpeg_garbage(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    ds = _cr_dataset(h, _small_chest(a))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.WindowCenter, ds.WindowWidth = "128", "256"
    garbage = np.random.default_rng(len(h.sop_uid)).integers(0, 256, 4000, dtype=np.uint8)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + garbage.tobytes() + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return _to_bytes(ds), "JPEG Baseline transfer syntax whose codestream is garbage"


def _bad_private_syntax(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    ds = _cr_dataset(h, _small_chest(a))
    payload = np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([payload])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = PRIVATE_TRANSFER_SYNTAX
    data = _to_bytes(ds, implicit_vr=False, little_endian=True)
    return data, "pixel data in a private vendor transfer syntax"


def _bad_ct(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    ds = base_dataset(h, "1.2.840.10008.5.1.4.1.1.2", "CT")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "5"
    ds.ImagePositionPatient = ["-175", "-175", "-120"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["0.7", "0.7"]
    yy, xx = np.mgrid[-1:1:128j, -1:1:128j]
    hu = np.where(xx**2 / 0.8 + yy**2 / 0.5 < 1, 40, -1000).astype(np.int16)
    hu[(np.abs(xx) > 0.15) & (np.abs(xx) < 0.7) & (np.abs(yy) < 0.45)] = -850
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    encode_pixels(ds, (hu + 1024).astype(np.int16), UID("1.2.840.10008.1.2.1"))
    return _to_bytes(ds), "an axial CT slice of the chest (modality CT)"


def _bad_head_cr(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    yy, xx = np.mgrid[-1:1:256j, -1:1:256j]
    r = np.sqrt(xx**2 / 0.7 + yy**2 / 0.9)
    skull = 0.15 + 0.5 * (r < 0.95) + 0.3 * ((r > 0.85) & (r < 0.95))
    headers = replace(h, study_description="SKULL (PA AND LAT)", series_description="SKULL PA")
    ds = _cr_dataset(headers, skull.astype(np.float32), body_part="HEAD")
    return _to_bytes(ds), "a CR skull radiograph (BodyPartExamined HEAD)"


def _bad_strip(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    strip = np.tile(np.linspace(0, 1, 4000, dtype=np.float32), (4, 1))
    return _to_bytes(_cr_dataset(h, strip)), "a 4 x 4000 pixel CR 'chest' image"


def _bad_multiframe(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    frames = np.stack([_small_chest(a, 64)] * 3)
    ds = _cr_dataset(h, frames)
    ds.NumberOfFrames = 3
    return _to_bytes(ds), "a 3-frame CR object where one grey radiograph is expected"


def _bad_rgb(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    grey = (_small_chest(a, 64) * 255).astype(np.uint8)
    ds = _cr_dataset(h, grey.astype(np.float32) / 255)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    del ds.WindowCenter, ds.WindowWidth
    ds.PixelData = np.stack([grey, grey, grey], axis=-1).tobytes()
    ds["PixelData"].VR = "OB"
    return _to_bytes(ds), "an RGB colour screenshot stored as a CR chest image"


def _bad_constant(h: HeaderFields, a: Anatomy) -> tuple[bytes, str]:
    ds = _cr_dataset(h, np.full((256, 256), 0.2, dtype=np.float32))
    return _to_bytes(ds), "a CR chest image whose pixels are all the same value"


_BAD_FILES = (
    (_bad_truncated_pixels, RejectReason.TRUNCATED),
    (_bad_truncated_header, RejectReason.TRUNCATED),
    (_bad_not_dicom_png, RejectReason.NOT_DICOM),
    (_bad_not_dicom_text, RejectReason.NOT_DICOM),
    (_bad_missing_pixels, RejectReason.MISSING_PIXEL_DATA),
    (_bad_sr, RejectReason.NON_IMAGE_SOP_CLASS),
    (_bad_gsps, RejectReason.NON_IMAGE_SOP_CLASS),
    (_bad_jpeg_garbage, RejectReason.UNDECODABLE),
    (_bad_private_syntax, RejectReason.UNSUPPORTED_TRANSFER_SYNTAX),
    (_bad_ct, RejectReason.NON_CXR),
    (_bad_head_cr, RejectReason.NON_CXR),
    (_bad_strip, RejectReason.ABSURD_DIMENSIONS),
    (_bad_multiframe, RejectReason.ABSURD_DIMENSIONS),
    (_bad_rgb, RejectReason.ABSURD_DIMENSIONS),
    (_bad_constant, RejectReason.EMPTY_IMAGE),
)


def _write_bad_files(
    out_root: Path, studies: list[_Study], seed: int, phi: _Phi
) -> list[list[str]]:
    """Writes every kind of bad file into real study folders; returns bad_files.csv rows."""
    rng = np.random.default_rng([seed, 3])
    rows = []
    for k, (builder, reason) in enumerate(_BAD_FILES):
        study = studies[(k * len(studies)) // len(_BAD_FILES)]
        dicom_id = _dicom_id(rng)
        headers = _headers(study, seed, dicom_id, study.frontal, 90 + k, 0.5)
        data, description = builder(headers, study.anatomy)
        phi.add_headers(headers, written=data)
        path = out_root / study.folder / f"{dicom_id}.dcm"
        path.write_bytes(data)
        rows.append([path.relative_to(out_root).as_posix(), reason.value, description])
    return rows
