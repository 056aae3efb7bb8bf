"""DICOM encoding of phantom images with the header and pixel variations real archives show.

A phantom (float32 in [0, 1], bright = dense) becomes stored values through a chosen
``DicomVariant``: CR or DX, MONOCHROME1 (stored values inverted) or MONOCHROME2, 10 to 16
stored bits, signed or unsigned, an optional non-identity rescale, windows (single or
multi-valued), a sigmoid VOI LUT Sequence or nothing, and one of five transfer syntaxes. The
stored values are chosen so that the standard display chain (modality LUT -> VOI -> invert if
MONOCHROME1) shows bright bones on a dark lung for every variant.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
SOP_CLASS_BY_MODALITY = {"CR": CR_IMAGE_STORAGE, "DX": DX_FOR_PRESENTATION}

COMPRESSED_SYNTAXES = (RLELossless, JPEG2000Lossless, JPEGLSLossless)

# Deterministic cycles: co-prime lengths so that every combination family turns up.
_TS_CYCLE = (
    ExplicitVRLittleEndian,
    RLELossless,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
_BITS_CYCLE = (12, 10, 14, 12, 15, 16, 12, 14, 16)
_MONO1_PHASES = frozenset({1, 4})  # index % 7 in this set -> MONOCHROME1
_VOI_CYCLE = ("window", "multi_window", "lut", "window", "lut+window", "none", "window", "window")
_RESCALE_CYCLE: tuple[tuple[float, float] | None, ...] = (
    None,
    (1.0, 0.0),
    (0.5, 0.0),
    (2.0, -1024.0),
    None,
    (1.0, -1024.0),
    (0.5, 100.0),
    (2.0, 100.0),
)
MAX_LUT_ENTRIES = 16384


@dataclass(frozen=True)
class DicomVariant:
    """How one image is encoded.

    Attributes:
        modality: ``"CR"`` (CR Image Storage) or ``"DX"`` (Digital X-Ray For Presentation).
        photometric: ``"MONOCHROME1"`` or ``"MONOCHROME2"``.
        bits_stored: 10 to 16 (BitsAllocated is always 16).
        signed: PixelRepresentation 1 when True.
        rescale: (slope, intercept), or None for no Rescale tags.
        voi: ``"window"``, ``"multi_window"``, ``"lut"``, ``"lut+window"`` or ``"none"``.
        transfer_syntax: Transfer Syntax UID of the written file.
    """

    modality: str
    photometric: str
    bits_stored: int
    signed: bool
    rescale: tuple[float, float] | None
    voi: str
    transfer_syntax: UID

    @property
    def has_lut(self) -> bool:
        """True when the file carries a VOI LUT Sequence."""
        return self.voi in ("lut", "lut+window")


def variant_for_index(index: int, modality: str) -> DicomVariant:
    """The encoding of the ``index``-th image of an archive (a deterministic cycle).

    The cycles are resolved against the constraints real files obey: DX files and files with
    a VOI LUT carry no rescale; a VOI LUT is only used on unsigned data of at most 14 bits
    (its table has one entry per stored value).
    """
    bits = _BITS_CYCLE[index % len(_BITS_CYCLE)]
    signed = bits in (12, 16) and index % 11 == 5
    voi = _VOI_CYCLE[(index // 3) % len(_VOI_CYCLE)]
    if voi in ("lut", "lut+window") and (bits > 14 or signed):
        voi = "multi_window"
    rescale = _RESCALE_CYCLE[(index // 2) % len(_RESCALE_CYCLE)]
    if modality == "DX" or voi in ("lut", "lut+window"):
        rescale = None
    return DicomVariant(
        modality=modality,
        photometric="MONOCHROME1" if index % 7 in _MONO1_PHASES else "MONOCHROME2",
        bits_stored=bits,
        signed=signed,
        rescale=rescale,
        voi=voi,
        transfer_syntax=_TS_CYCLE[index % len(_TS_CYCLE)],
    )


@dataclass(frozen=True)
class HeaderFields:
    """Identifying and descriptive header values of one image (all PHI is fake).

    Attributes:
        patient_name: DICOM PN, e.g. ``"HARRIS^EMMA^J"``.
        patient_id: Hospital MRN (not the MIMIC subject id).
        other_patient_ids: A second fake identifier.
        birth_date: DA string.
        sex: ``"M"`` or ``"F"``.
        age: AS string, e.g. ``"067Y"``.
        accession_number: Fake RIS accession number.
        institution_name: Fake hospital.
        referring_physician: DICOM PN of the referring physician.
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        sop_uid: SOPInstanceUID.
        study_date: DA string.
        study_time: TM string.
        study_id: Short StudyID.
        study_description: e.g. ``"CHEST (PA AND LAT)"``.
        series_description: e.g. ``"CHEST PA"``.
        series_number: SeriesNumber.
        instance_number: InstanceNumber.
        view_position: ``"PA"``, ``"AP"``, ``"LL"`` or ``"LATERAL"``.
        patient_orientation: PatientOrientation (row, column directions).
        manufacturer: Manufacturer.
        model_name: ManufacturerModelName.
        image_comments: Free text that names the patient (a scrubber must drop it).
        study_comments: Free text that names the patient (a scrubber must drop it).
        pixel_spacing_mm: Imager pixel spacing.
    """

    patient_name: str
    patient_id: str
    other_patient_ids: str
    birth_date: str
    sex: str
    age: str
    accession_number: str
    institution_name: str
    referring_physician: str
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    study_time: str
    study_id: str
    study_description: str
    series_description: str
    series_number: int
    instance_number: int
    view_position: str
    patient_orientation: tuple[str, str]
    manufacturer: str
    model_name: str
    image_comments: str
    study_comments: str
    pixel_spacing_mm: float


@dataclass(frozen=True)
class WrittenImage:
    """What was written, for the ground-truth tables.

    Attributes:
        path: File written.
        rows: Rows.
        cols: Columns.
        pixel_sha256: SHA-256 of the stored values (little-endian, as the array was written).
        window_center: First WindowCenter, or None.
        window_width: First WindowWidth, or None.
    """

    path: Path
    rows: int
    cols: int
    pixel_sha256: str
    window_center: float | None
    window_width: float | None


def base_dataset(headers: HeaderFields, sop_class: str, modality: str) -> Dataset:
    """A dataset with file meta, patient/study/series/equipment modules and fake PHI.

    Used for radiographs and for the bad files (SR, presentation state, CT...), so every file
    of a study carries the same identifiers.
    """
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(headers.sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = UID(headers.sop_uid)
    ds.StudyDate = headers.study_date
    ds.SeriesDate = headers.study_date
    ds.ContentDate = headers.study_date
    ds.StudyTime = headers.study_time
    ds.SeriesTime = headers.study_time
    ds.ContentTime = headers.study_time
    ds.AccessionNumber = headers.accession_number
    ds.Modality = modality
    ds.Manufacturer = headers.manufacturer
    ds.InstitutionName = headers.institution_name
    ds.ReferringPhysicianName = headers.referring_physician
    ds.StudyDescription = headers.study_description
    ds.SeriesDescription = headers.series_description
    ds.ManufacturerModelName = headers.model_name
    ds.PatientName = headers.patient_name
    ds.PatientID = headers.patient_id
    ds.PatientBirthDate = headers.birth_date
    ds.PatientSex = headers.sex
    ds.PatientAge = headers.age
    ds.OtherPatientIDs = headers.other_patient_ids
    ds.StudyInstanceUID = UID(headers.study_uid)
    ds.SeriesInstanceUID = UID(headers.series_uid)
    ds.StudyID = headers.study_id
    ds.SeriesNumber = headers.series_number
    ds.InstanceNumber = headers.instance_number
    ds.add(DataElement(0x00324000, "LT", headers.study_comments))  # StudyComments (retired)
    return ds


def to_stored_values(
    image: np.ndarray, variant: DicomVariant, rng: np.random.Generator
) -> np.ndarray:
    """Quantises a [0, 1] phantom into stored values for ``variant``.

    MONOCHROME1 stores ``1 - image`` so that the display inversion restores bright bones.
    The data occupy a random sub-range of the representable values, as detector data do.

    Returns:
        uint16 (unsigned) or int16 (signed) array of the image's shape.
    """
    bits = variant.bits_stored
    if variant.signed:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    span = high - low
    data_low = low + span * rng.uniform(0.02, 0.12)
    data_high = low + span * rng.uniform(0.80, 0.97)
    values = image if variant.photometric == "MONOCHROME2" else 1.0 - image
    stored = np.rint(data_low + values.astype(np.float64) * (data_high - data_low))
    stored = np.clip(stored, low, high)
    return stored.astype(np.int16 if variant.signed else np.uint16)


def _voi_range(stored: np.ndarray, variant: DicomVariant) -> tuple[float, float]:
    """Robust (0.5, 99.5) percentile range of the modality-LUT output."""
    sample = stored[::4, ::4].astype(np.float64)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if variant.rescale is not None:
        slope, intercept = variant.rescale
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return float(lo), float(max(hi, lo + 1.0))


def _sigmoid_lut(first: int, last: int, out_bits: int) -> np.ndarray:
    """A monotonic sigmoid VOI LUT with one entry per input value in [first, last]."""
    entries = last - first + 1
    x = np.arange(entries, dtype=np.float64)
    curve = 1.0 / (1.0 + np.exp(-(x - entries / 2) / (entries / 8)))
    curve = (curve - curve[0]) / (curve[-1] - curve[0])
    return np.rint(curve * (2**out_bits - 1)).astype(np.uint16)


def add_pixel_module(
    ds: Dataset, stored: np.ndarray, variant: DicomVariant, rng: np.random.Generator
) -> tuple[float | None, float | None]:
    """Adds Image Pixel, Modality LUT and VOI LUT elements (not the PixelData itself).

    Returns:
        The first (window centre, window width), or (None, None) without a window.
    """
    rows, cols = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = variant.photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = variant.bits_stored
    ds.HighBit = variant.bits_stored - 1
    ds.PixelRepresentation = int(variant.signed)
    if variant.rescale is not None:
        ds.RescaleIntercept = f"{variant.rescale[1]:g}"
        ds.RescaleSlope = f"{variant.rescale[0]:g}"
        ds.RescaleType = "US"
    lo, hi = _voi_range(stored, variant)
    center = width = None
    if variant.voi in ("window", "multi_window", "lut+window"):
        width = round((hi - lo) * rng.uniform(0.95, 1.15), 1)
        center = round((lo + hi) / 2 + rng.uniform(-0.03, 0.03) * width, 1)
        if variant.voi == "multi_window":
            ds.WindowCenter = [f"{center:g}", f"{center + 0.05 * width:.1f}"]
            ds.WindowWidth = [f"{width:g}", f"{0.6 * width:.1f}"]
            ds.WindowCenterWidthExplanation = ["NORMAL", "HARDER"]
        else:
            ds.WindowCenter = f"{center:g}"
            ds.WindowWidth = f"{width:g}"
        ds.VOILUTFunction = "LINEAR"
    if variant.has_lut:
        first, last = int(np.floor(lo)), int(np.ceil(hi))
        last = min(last, first + MAX_LUT_ENTRIES - 1)
        out_bits = 12 if rng.random() < 0.6 else 16
        lut = _sigmoid_lut(first, last, out_bits)
        item = Dataset()
        item.add(DataElement(0x00283002, "US", [len(lut), first, out_bits]))  # LUTDescriptor
        item.LUTExplanation = "SIGMOID"
        item.add(DataElement(0x00283006, "OW", lut.astype("<u2").tobytes()))  # LUTData
        ds.VOILUTSequence = DicomSequence([item])
    if variant.modality == "DX":
        ds.PresentationLUTShape = "INVERSE" if variant.photometric == "MONOCHROME1" else "IDENTITY"
    return center, width


def stored_sha256(stored: np.ndarray) -> str:
    """SHA-256 of stored values as little-endian bytes (what a decoder must reproduce)."""
    dtype = "<i2" if stored.dtype.kind == "i" else "<u2"
    return hashlib.sha256(np.ascontiguousarray(stored, dtype=dtype).tobytes()).hexdigest()


def encode_pixels(ds: Dataset, stored: np.ndarray, transfer_syntax: UID) -> None:
    """Sets PixelData in ``transfer_syntax``: native or compressed with pydicom's encoders."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dtype = "<i2" if stored.dtype.kind == "i" else "<u2"
    ds.PixelData = np.ascontiguousarray(stored, dtype=dtype).tobytes()
    ds["PixelData"].VR = "OW"
    if transfer_syntax in COMPRESSED_SYNTAXES:
        ds.compress(transfer_syntax, stored, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax


def write_radiograph(
    path: Path,
    image: np.ndarray,
    variant: DicomVariant,
    headers: HeaderFields,
    rng: np.random.Generator,
) -> WrittenImage:
    """Writes one chest radiograph as a DICOM file.

    Args:
        path: Destination ``.dcm`` path (parent folders are created).
        image: Phantom, float32 in [0, 1], bright = dense.
        variant: Encoding to use.
        headers: Identifying and descriptive values.
        rng: Source of the data range, window and LUT choices.

    Returns:
        Dimensions and the hash of the stored values.
    """
    ds = base_dataset(headers, SOP_CLASS_BY_MODALITY[variant.modality], variant.modality)
    if variant.modality == "DX":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.ImagerPixelSpacing = [f"{headers.pixel_spacing_mm:.4f}"] * 2
    else:
        ds.ImageType = ["DERIVED", "PRIMARY", "POST_PROCESSED"]
        ds.ImagerPixelSpacing = [f"{headers.pixel_spacing_mm:.4f}"] * 2
    ds.PixelSpacing = [f"{headers.pixel_spacing_mm:.4f}"] * 2
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = headers.view_position
    ds.PatientOrientation = list(headers.patient_orientation)
    ds.KVP = f"{int(rng.integers(90, 126))}"
    ds.ExposureTime = f"{int(rng.integers(4, 30))}"
    ds.ImageComments = headers.image_comments
    ds.AcquisitionNumber = 1
    ds.LossyImageCompression = "00"

    stored = to_stored_values(image, variant, rng)
    center, width = add_pixel_module(ds, stored, variant, rng)
    encode_pixels(ds, stored, variant.transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return WrittenImage(
        path=path,
        rows=int(stored.shape[0]),
        cols=int(stored.shape[1]),
        pixel_sha256=stored_sha256(stored),
        window_center=center,
        window_width=width,
    )
