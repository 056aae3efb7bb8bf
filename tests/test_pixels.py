"""Tests for cxr.pixels: the chain steps on synthetic data, real DICOM/PNG/JPEG files, and every
rejection reason the pixel core produces.

Synthetic files are written into ``tmp_path``; real files under /work/shared are only read (or
copied into ``tmp_path`` before being edited).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.processing import apply_modality_lut as pd_modality
from pydicom.pixels.processing import apply_voi as pd_voi
from pydicom.pixels.processing import apply_windowing as pd_windowing
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from cxr.errors import ImageRejected, RejectReason
from cxr.pixels import (
    DecodedImage,
    PixelConfig,
    apply_modality_lut,
    apply_voi,
    apply_window,
    check_header,
    decode_dicom,
    decode_raster,
    decode_stored_values,
    invert_monochrome1,
    percentile_clip,
    plugin_order,
    read_dicom,
    read_dicom_header,
    render_uint8,
    resize_and_crop,
    to_uint8,
)

DATA = Path("/work/shared/data")
RG1 = DATA / "dicom" / "pydicom_data_RG1"
UNCR, J2KR, J2KI = RG1 / "RG1_UNCR.dcm", RG1 / "RG1_J2KR.dcm", RG1 / "RG1_J2KI.dcm"
TXV = DATA / "dicom" / "torchxrayvision_tests"
SIIM = TXV / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
FAKE_MONO1 = TXV / "Fake_MONOHR1.dcm"
NIH_PNGS = sorted((DATA / "nih_cxr14").glob("*.png"))
COVID = DATA / "covid_chestxray" / "images"

requires_data = pytest.mark.skipif(not UNCR.exists(), reason="shared real data not present")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def make_ds(
    arr: np.ndarray | None = None,
    *,
    rows: int = 64,
    cols: int = 64,
    bits_stored: int = 12,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    modality: str = "CR",
    body_part: str | None = "CHEST",
    sop_class: str = ComputedRadiographyImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A minimal single-frame grey image dataset; ``arr`` (rows, cols) becomes Pixel Data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if arr is not None:
        rows, cols = arr.shape
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if arr is not None:
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Save with a proper file meta header (private syntaxes as explicit VR little endian)."""
    if ds.file_meta.TransferSyntaxUID.is_private:
        ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=True)
    return path


def gradient(rows: int = 64, cols: int = 64, hi: int = 4095) -> np.ndarray:
    """(rows, cols) uint16 ramp 0..hi along the flattened image."""
    return np.linspace(0, hi, rows * cols).round().astype(np.uint16).reshape(rows, cols)


def voi_lut_item(table: np.ndarray, first_map: int, bits: int = 16) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(table), first_map, bits])  # LUT Descriptor
    item.add_new(0x00283006, "US", [int(v) for v in table])  # LUT Data
    return item


def reason_of(fn: Callable[[], object]) -> RejectReason:
    with pytest.raises(ImageRejected) as info:
        fn()
    assert info.value.detail  # every rejection explains itself
    return info.value.reason


def lung_vs_mediastinum(img: np.ndarray) -> tuple[float, float]:
    """Mean of the two lung-field boxes (mid rows, lateral thirds) and of the central strip."""
    h, w = img.shape
    rows = slice(int(0.35 * h), int(0.65 * h))
    lungs = np.concatenate(
        [img[rows, int(0.15 * w) : int(0.35 * w)], img[rows, int(0.65 * w) : int(0.85 * w)]]
    )
    centre = img[rows, int(0.45 * w) : int(0.55 * w)]
    return float(lungs.mean()), float(centre.mean())


def pd_norm(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """pydicom's modality LUT + windowing of stored ``arr``, rescaled from [y_min, y_max] to
    [0, 1]."""
    bits = int(ds.BitsStored)
    if ds.PixelRepresentation:
        y_min, y_max = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        y_min, y_max = 0.0, 2.0**bits - 1
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        y_min = y_min * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        y_max = y_max * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = pd_windowing(np.asarray(pd_modality(arr, ds), dtype=np.float64), ds)
    return (out - y_min) / (y_max - y_min)


# --------------------------------------------------------------------------------------------
# PixelConfig
# --------------------------------------------------------------------------------------------


def test_config_defaults_and_normalisation() -> None:
    cfg = PixelConfig(allowed_modalities=(" cr", "dx "), allowed_body_parts=("chest", ""))
    assert cfg.allowed_modalities == ("CR", "DX")
    assert cfg.allowed_body_parts == ("CHEST", "")
    assert PixelConfig().raster_percentile_clip == (1.0, 99.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"image_size": 2.5},
        {"fit": "stretch"},
        {"percentile_clip": (99.0, 1.0)},
        {"percentile_clip": (1.0,)},
        {"raster_percentile_clip": (-1.0, 50.0)},
        {"min_side": 0},
        {"min_side": 100, "max_side": 50},
        {"max_aspect": 0.5},
        {"allowed_modalities": "CR"},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PixelConfig(**kwargs)


# --------------------------------------------------------------------------------------------
# chain steps (synthetic)
# --------------------------------------------------------------------------------------------


def test_modality_lut_rescale_slope_intercept() -> None:
    ds = make_ds(bits_stored=12)
    arr = np.array([[0, 1, 2, 4095]], dtype=np.uint16)
    np.testing.assert_array_equal(apply_modality_lut(arr, ds), arr.astype(np.float32))
    ds.RescaleSlope, ds.RescaleIntercept = 2.5, -1024
    out = apply_modality_lut(arr, ds)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, arr * 2.5 - 1024)
    np.testing.assert_allclose(out, pd_modality(arr, ds))


def test_modality_lut_sequence_uses_pydicom() -> None:
    ds = make_ds(bits_stored=8)
    item = Dataset()
    item.LUTDescriptor = [4, 10, 16]
    item.LUTData = [100, 200, 300, 400]
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = DicomSequence([item])
    arr = np.array([[0, 10, 11, 12, 13, 200]], dtype=np.uint8)
    out = apply_modality_lut(arr, ds)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[100, 100, 200, 300, 400, 400]])


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("center,width", [(2048.0, 4096.0), (1000.0, 301.0), (3000.5, 2.0)])
def test_window_matches_pydicom_synthetic(function: str, center: float, width: float) -> None:
    ds = make_ds(bits_stored=12)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    arr = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    ours, voi = apply_voi(apply_modality_lut(arr, ds), ds)
    assert voi == "window" and ours.dtype == np.float32
    assert ours.min() >= 0.0 and ours.max() <= 1.0
    np.testing.assert_allclose(ours, pd_norm(ds, arr), atol=1e-5)


@requires_data
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("center,width", [(15000.0, 30000.0), (9000.0, 6000.0)])
def test_window_matches_pydicom_on_real_data(
    rg1_raw: np.ndarray, function: str, center: float, width: float
) -> None:
    ds = read_dicom_header(UNCR)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    arr = rg1_raw[::2, ::2]
    ours, _ = apply_voi(apply_modality_lut(arr, ds), ds)
    assert float(np.abs(ours - pd_norm(ds, arr)).max()) < 1e-4


def test_window_with_rescale_matches_pydicom() -> None:
    ds = make_ds(bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -100
    ds.WindowCenter, ds.WindowWidth = 700, 900
    arr = gradient()
    ours, _ = apply_voi(apply_modality_lut(arr, ds), ds)
    np.testing.assert_allclose(ours, pd_norm(ds, arr), atol=1e-5)


def test_window_linear_width_one_is_a_step() -> None:
    x = np.array([99.0, 99.5, 99.6, 100.0], dtype=np.float32)
    np.testing.assert_array_equal(apply_window(x, 100.0, 1.0, "LINEAR"), [0, 0, 1, 1])
    with pytest.raises(ValueError):
        apply_window(x, 100.0, 0.5, "LINEAR")


def test_multivalued_window_takes_first() -> None:
    ds = make_ds(bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = [1000, 3000], [500, 100]
    arr = gradient()
    ours, voi = apply_voi(arr.astype(np.float32), ds)
    expected = apply_window(arr.astype(np.float32), 1000, 500, "LINEAR")
    assert voi == "window"
    np.testing.assert_array_equal(ours, expected)


def test_invalid_or_missing_window_falls_back_to_full_range() -> None:
    ds = make_ds(bits_stored=12)
    arr = np.array([[100.0, 300.0, 500.0]], dtype=np.float32)
    out, voi = apply_voi(arr, ds)
    assert voi == "full_range"
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]])
    ds.WindowCenter, ds.WindowWidth = 200, 0  # width 0 is forbidden for LINEAR
    assert apply_voi(arr, ds)[1] == "full_range"


def test_voi_lut_sequence_matches_pydicom_and_beats_window() -> None:
    ds = make_ds(bits_stored=12)
    table = (np.linspace(0, 1, 2048) ** 2 * 4000).round().astype(np.uint16)  # not symmetric
    ds.VOILUTSequence = DicomSequence([voi_lut_item(table, first_map=1000, bits=12)])
    ds.WindowCenter, ds.WindowWidth = 2048, 4096  # must be ignored (PS3.3 C.11.2)
    arr = gradient()
    ours, voi = apply_voi(apply_modality_lut(arr, ds), ds)
    assert voi == "voi_lut_sequence"
    ref = pd_voi(arr, ds).astype(np.float64)
    ref = (ref - table.min()) / (table.max() - table.min())
    assert float(np.abs(ours - ref).max()) < 1e-6
    assert ours[0, 0] == 0.0 and ours[-1, -1] == 1.0  # below / above the mapped range


def test_inversion_happens_after_voi(tmp_path: Path) -> None:
    """MONOCHROME1 must be inverted after a non-symmetric VOI LUT, not before it."""
    arr = gradient(hi=1023)
    table = (np.linspace(0, 1, 1024) ** 3 * 65535).round().astype(np.uint16)
    ds = make_ds(arr, bits_stored=10, photometric="MONOCHROME1")
    ds.VOILUTSequence = DicomSequence([voi_lut_item(table, first_map=0)])
    path = write(ds, tmp_path / "mono1_voilut.dcm")
    out = decode_dicom(path, PixelConfig(image_size=64))
    t01 = table.astype(np.float32) / 65535.0
    after = to_uint8(1.0 - t01[arr])  # the standard: VOI, then invert
    before = to_uint8(t01[1023 - arr])  # the wrong order
    assert out.voi == "voi_lut_sequence" and out.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(out.pixels, after)
    assert np.abs(out.pixels.astype(int) - before.astype(int)).mean() > 50
    np.testing.assert_array_equal(invert_monochrome1(t01, "MONOCHROME2"), t01)


def test_percentile_clip() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((50, 40), dtype=np.float32)
    lo, hi = np.percentile(x, [1, 99])
    out = percentile_clip(x, 1.0, 99.0)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, np.clip((x - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0
    # integer fast path (histogram) == np.percentile
    for dtype, top in ((np.uint8, 255), (np.uint16, 4095)):
        ints = rng.integers(0, top + 1, size=(37, 53)).astype(dtype)
        p = np.percentile(ints, [2.5, 97.5])
        ref = np.clip((ints.astype(np.float64) - p[0]) / (p[1] - p[0]), 0, 1)
        np.testing.assert_allclose(percentile_clip(ints, 2.5, 97.5), ref, atol=1e-6)
    # degenerate percentiles fall back to min/max; constant -> zeros
    mostly = np.zeros((10, 10), np.float32)
    mostly[0, 0] = 1.0
    assert percentile_clip(mostly, 1, 99)[0, 0] == 1.0
    assert not percentile_clip(np.ones((4, 4)), 1, 99).any()
    with pytest.raises(ValueError):
        percentile_clip(x, 50, 10)


def test_to_uint8_rounds_and_clips() -> None:
    x = np.array([-0.5, 0.0, 0.5 / 255, 0.499 / 255, 0.5, 1.0, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 1, 0, 128, 255, 255])


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (128, 128), (40, 90)])
def test_resize_crop_and_pad(shape: tuple[int, int]) -> None:
    h, w = shape
    img = np.full(shape, 200, np.uint8)
    crop = resize_and_crop(img, 64, "crop")
    pad = resize_and_crop(img, 64, "pad")
    assert crop.shape == pad.shape == (64, 64) and crop.dtype == pad.dtype == np.uint8
    assert (crop == 200).all()  # crop keeps only image content
    content = pad > 0
    rows_with, cols_with = content.any(axis=1).sum(), content.any(axis=0).sum()
    # padded content keeps the aspect ratio (longest side fills 64)
    assert max(rows_with, cols_with) == 64
    assert abs(rows_with / cols_with - h / w) < 0.05
    if h != w:
        assert (~content).any()


def test_resize_crop_is_centred() -> None:
    img = np.zeros((100, 300), np.uint8)
    img[:, 80:220] = 255  # the central square (+ a margin for the Lanczos support)
    out = resize_and_crop(img, 50, "crop")
    assert out.min() == 255
    img[:, 80:220] = 0
    img[:, 100:150] = 255  # left half of the central square only
    out = resize_and_crop(img, 50, "crop").astype(int)
    assert out[:, :20].mean() > 250 and out[:, 30:].mean() < 5
    with pytest.raises(ValueError):
        resize_and_crop(img.astype(np.float32), 50, "crop")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        resize_and_crop(img, 50, "squash")


@pytest.mark.parametrize(
    "setup",
    ["window", "rescale_window", "full_range", "voi_lut", "signed", "mono1", "uint8"],
)
def test_lookup_table_path_equals_float_path(setup: str) -> None:
    rng = np.random.default_rng(1)
    signed = setup == "signed"
    bits = 8 if setup == "uint8" else 12
    photometric = "MONOCHROME1" if setup == "mono1" else "MONOCHROME2"
    ds = make_ds(bits_stored=bits, signed=signed, photometric=photometric)
    if signed:
        arr = rng.integers(-2048, 2048, size=(64, 80)).astype(np.int16)
    else:
        arr = rng.integers(0, 2**bits, size=(64, 80)).astype(np.uint8 if bits == 8 else np.uint16)
    if setup in ("window", "signed", "mono1", "uint8"):
        ds.WindowCenter, ds.WindowWidth = (100, 150) if bits == 8 else (300, 1500)
    if setup == "rescale_window":
        ds.RescaleSlope, ds.RescaleIntercept = 0.75, -500
        ds.WindowCenter, ds.WindowWidth = 600, 1200
    if setup == "voi_lut":
        table = (np.sqrt(np.linspace(0, 1, 3000)) * 4095).round().astype(np.uint16)
        ds.VOILUTSequence = DicomSequence([voi_lut_item(table, first_map=500, bits=12)])
    fast, voi_fast = render_uint8(arr, ds, use_lut=True)
    slow, voi_slow = render_uint8(arr, ds, use_lut=False)
    assert voi_fast == voi_slow
    np.testing.assert_array_equal(fast, slow)


def test_lookup_table_path_sigmoid_within_one_level() -> None:
    ds = make_ds(bits_stored=12)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 2000, 800, "SIGMOID"
    arr = gradient(64, 80)
    fast, _ = render_uint8(arr, ds, use_lut=True)
    slow, _ = render_uint8(arr, ds, use_lut=False)
    assert np.abs(fast.astype(int) - slow.astype(int)).max() <= 1


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rg1_raw() -> np.ndarray:
    return decode_stored_values(read_dicom(UNCR))[0]


@pytest.fixture(scope="module")
def real_outputs() -> dict[str, DecodedImage]:
    cfg = PixelConfig()
    return {p.name: decode_dicom(p, cfg) for p in (UNCR, J2KR, J2KI, SIIM, FAKE_MONO1)}


@requires_data
def test_j2k_lossless_decodes_exactly_like_uncompressed(
    rg1_raw: np.ndarray, real_outputs: dict[str, DecodedImage]
) -> None:
    j2k_raw, decoder = decode_stored_values(read_dicom(J2KR))
    assert decoder == "pylibjpeg-openjpeg"
    assert rg1_raw.shape == (1955, 1841) and rg1_raw.dtype == j2k_raw.dtype
    np.testing.assert_array_equal(j2k_raw, rg1_raw)
    unc, j2k = real_outputs[UNCR.name], real_outputs[J2KR.name]
    np.testing.assert_array_equal(unc.pixels, j2k.pixels)
    assert unc.decoder == "pydicom-native" and unc.voi == j2k.voi == "window"
    assert (unc.original_rows, unc.original_cols, unc.bits_stored) == (1955, 1841, 15)
    assert j2k.transfer_syntax == JPEG2000Lossless


@requires_data
def test_j2k_lossy_is_close(rg1_raw: np.ndarray, real_outputs: dict[str, DecodedImage]) -> None:
    lossy_raw, _ = decode_stored_values(read_dicom(J2KI))
    raw_diff = np.abs(lossy_raw.astype(np.int32) - rg1_raw.astype(np.int32))
    assert 0 < raw_diff.max() <= 403  # the README's measured maximum
    out_diff = np.abs(
        real_outputs[J2KI.name].pixels.astype(int) - real_outputs[UNCR.name].pixels.astype(int)
    )
    # measured: mean abs diff ~0.1 grey level on the 256x256 output
    assert out_diff.mean() < 0.5, f"mean abs diff {out_diff.mean():.3f}"
    assert out_diff.max() <= 4


@requires_data
@pytest.mark.parametrize("name", [UNCR.name, J2KR.name, J2KI.name, SIIM.name])
def test_real_dicoms_have_bright_bones_and_dark_lungs(
    real_outputs: dict[str, DecodedImage], name: str
) -> None:
    out = real_outputs[name]
    assert out.pixels.shape == (256, 256) and out.pixels.dtype == np.uint8
    lungs, centre = lung_vs_mediastinum(out.pixels)
    assert lungs + 20 < centre, (name, lungs, centre)


@requires_data
def test_fake_monochrome1_is_the_inverse_of_the_siim_image(
    real_outputs: dict[str, DecodedImage],
) -> None:
    """Fake_MONOHR1 = SIIM pixels with the header set to MONOCHROME1: its output must be 255 -
    the SIIM output (so, being mislabelled, it shows bright lungs)."""
    siim, fake = real_outputs[SIIM.name], real_outputs[FAKE_MONO1.name]
    assert siim.photometric == "MONOCHROME2" and fake.photometric == "MONOCHROME1"
    assert siim.decoder == fake.decoder == "pillow" and siim.voi == "full_range"
    diff = np.abs(fake.pixels.astype(int) - (255 - siim.pixels.astype(int)))
    assert diff.max() <= 2 and diff.mean() < 0.5  # rounding + Lanczos clipping only
    siim_raw, _ = decode_stored_values(read_dicom(SIIM))
    fake_raw, _ = decode_stored_values(read_dicom(FAKE_MONO1))
    np.testing.assert_array_equal(siim_raw, fake_raw)  # only the photometric flag differs
    lungs, centre = lung_vs_mediastinum(fake.pixels)
    assert lungs > centre + 20


@requires_data
def test_sources_path_bytes_and_file_objects_agree(real_outputs: dict[str, DecodedImage]) -> None:
    data = SIIM.read_bytes()
    ref = real_outputs[SIIM.name].pixels
    np.testing.assert_array_equal(decode_dicom(data).pixels, ref)
    np.testing.assert_array_equal(decode_dicom(io.BytesIO(data)).pixels, ref)
    with open(SIIM, "rb") as fh:
        np.testing.assert_array_equal(decode_dicom(fh).pixels, ref)
        assert fh.tell() == 0


@requires_data
def test_check_header_on_header_only_reads() -> None:
    for path in (UNCR, J2KR, SIIM):
        ds = read_dicom_header(path)
        assert "PixelData" not in ds
        check_header(ds, PixelConfig())


def test_plugin_preferences() -> None:
    assert plugin_order("1.2.840.10008.1.2.5")[0] == "pylibjpeg"  # RLE: pylibjpeg-rle
    assert plugin_order("1.2.840.10008.1.2.4.80")[0] == "pyjpegls"  # JPEG-LS lossless
    assert plugin_order("1.2.840.10008.1.2.4.90")[0] == "pylibjpeg"  # J2K lossless: openjpeg
    assert plugin_order("1.2.840.10008.1.2.4.50")[0] == "pillow"  # JPEG baseline
    assert plugin_order(ExplicitVRLittleEndian) == [""]


def _covid_examples() -> dict[tuple[str, str], Path]:
    found: dict[tuple[str, str], Path] = {}
    for path in sorted(COVID.iterdir(), key=lambda p: (p.stat().st_size, p.name)):
        with Image.open(path) as im:
            found.setdefault((im.format or "", im.mode), path)
    return found


@requires_data
def test_rasters_decode() -> None:
    cfg = PixelConfig(image_size=224)
    for path in NIH_PNGS:
        out = decode_raster(path, cfg)
        assert out.pixels.shape == (224, 224) and out.pixels.dtype == np.uint8
        assert (out.source_format, out.photometric, out.voi) == ("png", "L", "percentile")
        with Image.open(path) as im:
            assert (out.original_cols, out.original_rows) == im.size
        lungs, centre = lung_vs_mediastinum(out.pixels)
        assert lungs < centre
    examples = _covid_examples()
    wanted = [("JPEG", "L"), ("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA")]
    for key in wanted:
        out = decode_raster(examples[key], cfg)
        assert out.pixels.shape == (224, 224) and out.pixels.dtype == np.uint8
        assert out.source_format == key[0].lower() and out.photometric == key[1]
        assert out.pixels.max() > out.pixels.min()
    # bytes input and no percentile window
    raw = decode_raster(NIH_PNGS[0].read_bytes(), PixelConfig(raster_percentile_clip=None))
    assert raw.voi == "full_range" and raw.pixels.shape == (256, 256)


def test_raster_modes_synthetic(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, size=(96, 128)).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (96, 128, 1)).astype(np.uint8)], axis=-1)
    cfg = PixelConfig(image_size=64, raster_percentile_clip=None)
    outs = {}
    for mode, arr in (("L", grey), ("RGB", rgb), ("RGBA", rgba)):
        path = tmp_path / f"{mode}.png"
        Image.fromarray(arr, mode=mode).save(path)
        outs[mode] = decode_raster(path, cfg)
    np.testing.assert_array_equal(outs["L"].pixels, outs["RGB"].pixels)
    np.testing.assert_array_equal(outs["L"].pixels, outs["RGBA"].pixels)  # alpha dropped
    sixteen = grey.astype(np.uint16) * 257
    Image.fromarray(sixteen).save(tmp_path / "i16.png")
    out16 = decode_raster(tmp_path / "i16.png", cfg)
    assert out16.bits_stored == 16 and out16.photometric.startswith("I")
    assert np.abs(out16.pixels.astype(int) - outs["L"].pixels.astype(int)).max() <= 1


# --------------------------------------------------------------------------------------------
# rejections
# --------------------------------------------------------------------------------------------


def test_reject_not_dicom(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("FINDINGS: no acute cardiopulmonary process.\n" * 20)
    assert reason_of(lambda: decode_dicom(text)) is RejectReason.NOT_DICOM
    assert reason_of(lambda: read_dicom_header(text)) is RejectReason.NOT_DICOM
    assert reason_of(lambda: decode_dicom(b"short")) is RejectReason.NOT_DICOM


@requires_data
def test_reject_truncated(tmp_path: Path) -> None:
    data = UNCR.read_bytes()
    mid_pixels = tmp_path / "cut_pixels.dcm"
    mid_pixels.write_bytes(data[: len(data) // 2])
    assert reason_of(lambda: decode_dicom(mid_pixels)) is RejectReason.TRUNCATED
    read_dicom_header(mid_pixels)  # the header itself is complete
    in_header = tmp_path / "cut_header.dcm"
    in_header.write_bytes(data[:1000])  # inside an element of the main dataset
    assert reason_of(lambda: read_dicom_header(in_header)) is RejectReason.TRUNCATED
    assert reason_of(lambda: decode_dicom(in_header)) is RejectReason.TRUNCATED
    in_meta = data[:200]  # inside the file meta information
    assert reason_of(lambda: decode_dicom(in_meta)) is RejectReason.TRUNCATED
    j2k = J2KR.read_bytes()
    assert reason_of(lambda: decode_dicom(j2k[: len(j2k) // 2])) is RejectReason.TRUNCATED


def test_reject_missing_pixel_data(tmp_path: Path) -> None:
    path = write(make_ds(rows=128, cols=128), tmp_path / "nopix.dcm")
    assert reason_of(lambda: decode_dicom(path)) is RejectReason.MISSING_PIXEL_DATA
    check_header(read_dicom_header(path), PixelConfig())  # the header alone is fine


@pytest.mark.parametrize(
    "sop_class",
    [
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
        "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    ],
)
def test_reject_non_image_sop_class(tmp_path: Path, sop_class: str) -> None:
    ds = make_ds(sop_class=sop_class, modality="SR" if "88" in sop_class else "PR")
    del ds.Rows, ds.Columns
    path = write(ds, tmp_path / "nonimage.dcm")
    assert reason_of(lambda: decode_dicom(path)) is RejectReason.NON_IMAGE_SOP_CLASS
    assert (
        reason_of(lambda: check_header(read_dicom_header(path), PixelConfig()))
        is RejectReason.NON_IMAGE_SOP_CLASS
    )


def test_reject_unsupported_transfer_syntax(tmp_path: Path) -> None:
    ds = make_ds(gradient(), transfer_syntax="1.2.826.0.1.3680043.9999.1.2")
    path = write(ds, tmp_path / "private_ts.dcm")
    assert reason_of(lambda: decode_dicom(path)) is RejectReason.UNSUPPORTED_TRANSFER_SYNTAX


def test_reject_undecodable(tmp_path: Path) -> None:
    ds = make_ds(rows=128, cols=128, transfer_syntax=JPEG2000Lossless)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 4])
    path = write(ds, tmp_path / "garbage_j2k.dcm")
    assert reason_of(lambda: decode_dicom(path)) is RejectReason.UNDECODABLE


@pytest.mark.parametrize(
    "changes",
    [{"modality": "CT"}, {"body_part": "HEAD"}, {"modality": ""}],
)
def test_reject_non_cxr(tmp_path: Path, changes: dict) -> None:
    path = write(make_ds(gradient(), **changes), tmp_path / "noncxr.dcm")
    assert reason_of(lambda: decode_dicom(path)) is RejectReason.NON_CXR
    everything = PixelConfig(allowed_modalities=(), allowed_body_parts=())
    assert decode_dicom(path, everything).pixels.shape == (256, 256)


def test_missing_body_part_is_accepted(tmp_path: Path) -> None:
    path = write(make_ds(gradient(), body_part=None), tmp_path / "nobody.dcm")
    out = decode_dicom(path, PixelConfig(image_size=64))
    assert out.voi == "full_range" and out.decoder == "pydicom-native"


@pytest.mark.parametrize("shape", [(1, 1), (10, 5000), (64, 400)])
def test_reject_absurd_dimensions(tmp_path: Path, shape: tuple[int, int]) -> None:
    arr = np.zeros(shape, np.uint16)
    path = write(make_ds(arr), tmp_path / "absurd.dcm")
    assert reason_of(lambda: decode_dicom(path)) is RejectReason.ABSURD_DIMENSIONS


def test_reject_multiframe_and_colour(tmp_path: Path) -> None:
    arr = gradient()
    ds = make_ds(arr)
    ds.NumberOfFrames = 2
    ds.PixelData = np.concatenate([arr, arr]).tobytes()
    path = write(ds, tmp_path / "multiframe.dcm")
    assert reason_of(lambda: decode_dicom(path)) is RejectReason.ABSURD_DIMENSIONS
    rgb = make_ds(rows=64, cols=64, bits_stored=8, photometric="RGB")
    rgb.SamplesPerPixel, rgb.PlanarConfiguration = 3, 0
    rgb.PixelData = bytes(64 * 64 * 3)
    path = write(rgb, tmp_path / "rgb.dcm")
    assert reason_of(lambda: decode_dicom(path)) is RejectReason.ABSURD_DIMENSIONS


def test_reject_empty_image(tmp_path: Path) -> None:
    path = write(make_ds(np.full((64, 64), 700, np.uint16)), tmp_path / "flat.dcm")
    assert reason_of(lambda: decode_dicom(path)) is RejectReason.EMPTY_IMAGE
    ds = make_ds(gradient(hi=1000))
    ds.WindowCenter, ds.WindowWidth = 3000, 100  # everything below the window
    path = write(ds, tmp_path / "saturated.dcm")
    assert reason_of(lambda: decode_dicom(path)) is RejectReason.EMPTY_IMAGE
    flat_png = tmp_path / "flat.png"
    Image.fromarray(np.full((80, 80), 9, np.uint8)).save(flat_png)
    assert reason_of(lambda: decode_raster(flat_png)) is RejectReason.EMPTY_IMAGE


def test_reject_unreadable_raster(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), np.uint8)).save(good)
    data = good.read_bytes()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(data[:60] + b"\x00" * 40 + data[100:])
    assert reason_of(lambda: decode_raster(corrupt)) is RejectReason.UNREADABLE_RASTER
    half = data[: len(data) // 2]
    assert reason_of(lambda: decode_raster(half)) is RejectReason.UNREADABLE_RASTER
    assert reason_of(lambda: decode_raster(b"not an image")) is RejectReason.UNREADABLE_RASTER
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tiny)
    assert reason_of(lambda: decode_raster(tiny)) is RejectReason.ABSURD_DIMENSIONS


@requires_data
def test_real_copy_edited_in_tmp(tmp_path: Path) -> None:
    """Header edits on a copy of a real file: body part HEAD -> NON_CXR."""
    copy = Path(shutil.copy(SIIM, tmp_path / "siim_head.dcm"))
    ds = pydicom.dcmread(copy)
    ds.BodyPartExamined = "HEAD"
    ds.save_as(copy, enforce_file_format=True)
    assert reason_of(lambda: decode_dicom(copy)) is RejectReason.NON_CXR
