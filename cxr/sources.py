"""Source layouts: how an archive on disk maps to files, studies, images and reports.

Three adapters share one interface so the same ingest serves the demo and real archives:

* ``mimic-cxr``: ``files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm`` (or ``.jpg``/``.png`` as in
  MIMIC-CXR-JPG) with the report ``files/pNN/pNNNNNNNN/sNNNNNNNN.txt``; patient and study come
  from the path.
* ``dicom-tree``: any folder of DICOM files (a raw PACS export); studies are grouped by the
  StudyInstanceUID in the header, patients by PatientID. Reports are optional: a text file
  named ``<StudyInstanceUID>.txt`` or ``<AccessionNumber>.txt`` anywhere in the tree.
* ``images-csv``: PNG/JPEG files plus one CSV whose rows name an image file, a patient and a
  text (e.g. the COVID-19 image data collection's ``metadata.csv``).

Listing is a streaming walk; nothing here holds more than one directory in memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Layout = Literal["mimic-cxr", "dicom-tree", "images-csv"]
LAYOUTS: tuple[str, ...] = ("mimic-cxr", "dicom-tree", "images-csv")
FileKind = Literal["dicom", "raster", "report", "report_table", "other"]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
_MIMIC_IMAGE = re.compile(
    r"^(?:.*/)?files/p\d{2}/p(?P<subject>\d+)/s(?P<study>\d+)/(?P<image>[^/]+)$"
)
_MIMIC_REPORT = re.compile(r"^(?:.*/)?files/p\d{2}/p(?P<subject>\d+)/s(?P<study>\d+)\.txt$")


@dataclass(frozen=True)
class ImagesCsvOptions:
    """Column mapping of the images-csv layout (defaults fit the COVID-19 collection).

    Attributes:
        csv_name: CSV file, relative to the source root.
        image_dir: Folder of the image files, relative to the source root.
        image_column: Column with the image file name (relative to ``image_dir``).
        patient_column: Column with the patient id.
        text_column: Column with the report / note text.
        view_column: Column with the view position ("" = none).
        study_column: Column with a study id; "" groups a patient's rows that share one text.
    """

    csv_name: str = "metadata.csv"
    image_dir: str = "images"
    image_column: str = "filename"
    patient_column: str = "patientid"
    text_column: str = "clinical_notes"
    view_column: str = "view"
    study_column: str = ""


@dataclass(frozen=True)
class ListedFile:
    """One file found under the source root.

    Attributes:
        rel_path: POSIX path relative to the source root.
        kind: What the layout says the file is.
        size_bytes: File size.
        mtime_ns: Modification time (used only to skip unchanged files on re-scan).
        raw_patient: Patient id from the path (mimic-cxr), in clear; never written out.
        raw_study: Study id from the path (mimic-cxr), in clear; never written out.
        raw_image: Image id from the path (mimic-cxr dicom_id), in clear; never written out.
    """

    rel_path: str
    kind: FileKind
    size_bytes: int
    mtime_ns: int
    raw_patient: str | None = None
    raw_study: str | None = None
    raw_image: str | None = None


@dataclass(frozen=True)
class SourceSpec:
    """Where the archive is and how it is laid out."""

    root: Path
    layout: str = "mimic-cxr"
    images_csv: ImagesCsvOptions = field(default_factory=ImagesCsvOptions)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown source layout {self.layout!r}; expected one of {LAYOUTS}")


def walk_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Yield ``(relative posix path, stat)`` for every regular file under ``root``, sorted.

    Hidden files and folders (starting with '.') are skipped: they are tool droppings such as
    ``.DS_Store`` or our own temporary files, not archive content.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"source root {root} does not exist or is not a directory")
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            children = sorted(entries, key=lambda e: e.name)
        subdirs = []
        for entry in children:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(Path(entry.path))
            elif entry.is_file():
                rel = Path(entry.path).relative_to(root).as_posix()
                yield rel, entry.stat()
        stack.extend(reversed(subdirs))


def classify(rel_path: str, spec: SourceSpec) -> tuple[FileKind, dict[str, str]]:
    """Kind and path-derived ids of one file under ``spec.layout``.

    Returns:
        ``(kind, ids)`` where ``ids`` may hold ``raw_patient``, ``raw_study``, ``raw_image``.
    """
    lower = rel_path.lower()
    if spec.layout == "mimic-cxr":
        match = _MIMIC_REPORT.match(rel_path)
        if match:
            return "report", {"raw_patient": match["subject"], "raw_study": match["study"]}
        match = _MIMIC_IMAGE.match(rel_path)
        if match:
            stem, _, suffix = match["image"].rpartition(".")
            kind: FileKind
            if f".{suffix.lower()}" == ".dcm":
                kind = "dicom"
            elif f".{suffix.lower()}" in RASTER_SUFFIXES:
                kind = "raster"
            else:
                return "other", {}
            return kind, {
                "raw_patient": match["subject"],
                "raw_study": match["study"],
                "raw_image": stem,
            }
        return "other", {}
    if spec.layout == "dicom-tree":
        if lower.endswith(".txt"):
            return "report", {"raw_study": Path(rel_path).stem}
        if lower.endswith(RASTER_SUFFIXES) or lower.endswith((".csv", ".md", ".html", ".json")):
            return "other", {}
        return "dicom", {}  # anything else is a DICOM candidate (PACS exports often lack suffixes)
    options = spec.images_csv
    if rel_path == options.csv_name:
        return "report_table", {}
    image_dir = options.image_dir.strip("/")
    inside = not image_dir or rel_path.startswith(image_dir + "/")
    if inside and lower.endswith(RASTER_SUFFIXES):
        return "raster", {}
    if inside and lower.endswith(".dcm"):
        return "dicom", {}
    return "other", {}


def list_source(spec: SourceSpec) -> Iterator[ListedFile]:
    """Stream every file of the archive with its layout classification.

    For ``mimic-cxr`` the archive is the ``files/`` tree (the root also holds index CSVs,
    licences and checksums that are not study data); other layouts scan the whole root.
    """
    root = Path(spec.root)
    if spec.layout == "mimic-cxr" and (root / "files").is_dir():
        listing = ((f"files/{rel}", st) for rel, st in walk_files(root / "files"))
    else:
        listing = walk_files(root)
    for rel_path, stat in listing:
        kind, ids = classify(rel_path, spec)
        yield ListedFile(
            rel_path=rel_path,
            kind=kind,
            size_bytes=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            **ids,
        )
