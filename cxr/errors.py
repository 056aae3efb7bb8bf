"""Why an input file cannot be used. Every quarantined file carries one of these reasons."""

from __future__ import annotations

import enum


class RejectReason(enum.StrEnum):
    """Stable, machine-readable reasons for quarantining an input file."""

    NOT_DICOM = "not_dicom"
    """The file has no DICOM preamble/meta and cannot be parsed as a dataset."""
    TRUNCATED = "truncated"
    """The file ends before the data it announces (header or pixel data cut short)."""
    MISSING_PIXEL_DATA = "missing_pixel_data"
    """A DICOM image object without a PixelData element."""
    NON_IMAGE_SOP_CLASS = "non_image_sop_class"
    """Structured report, presentation state, key object selection, ... (no pixels to learn)."""
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    """No installed decoder handles the transfer syntax."""
    UNDECODABLE = "undecodable"
    """A decoder was found but failed on the pixel data (corrupt codestream, bad lengths...)."""
    NON_CXR = "non_cxr"
    """Modality or body part is outside the configured chest X-ray policy."""
    ABSURD_DIMENSIONS = "absurd_dimensions"
    """Rows/columns outside the configured plausible range, or multi-frame/colour where
    a single grey radiograph is expected."""
    UNREADABLE_RASTER = "unreadable_raster"
    """A PNG/JPEG file that PIL cannot open or decode."""
    EMPTY_IMAGE = "empty_image"
    """The decoded image has (almost) no contrast: constant after windowing."""
    OUTSIDE_LAYOUT = "outside_layout"
    """A file the layout adapter recognises neither as an image nor as a report."""
    UNREADABLE_REPORT = "unreadable_report"
    """A report file that is not valid UTF-8/Latin-1 text, or is empty."""
    MISSING_IDENTIFIERS = "missing_identifiers"
    """An image with no study, patient or instance identifier in its header or path."""
    DUPLICATE_INSTANCE = "duplicate_instance"
    """A second file with the same SOPInstanceUID as an ingested one (same image twice)."""
    UNMATCHED_RECORD = "unmatched_record"
    """A CSV row whose image file does not exist (images-csv layout)."""


class ImageRejected(Exception):
    """Raised by the decoding core for a bad *input* (not a bug): the caller quarantines it.

    Attributes:
        reason: One of ``RejectReason``.
        detail: Human-readable explanation: what was received and what was expected.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
