"""Benchmark the DICOM pixel core (cxr.pixels.decode_dicom) against a bare pydicom loop.

Usage::

    python bench/ingest.py [--n 20] [--rows 3000 --cols 2500] [--out bench/results] [--profile]

Builds a 12-bit ``rows x cols`` phantom (smooth chest-like shapes + noise) and writes it, into a
temporary folder, uncompressed and in every compressed syntax we can encode here: RLE Lossless,
JPEG-LS Lossless, JPEG 2000 Lossless, JPEG 2000 lossy (~20:1) and an 8-bit JPEG Baseline copy.
For each file, single process (= per core), it times, interleaved and after a warm-up:

* ours: ``decode_dicom(path, PixelConfig(image_size=512))`` (full chain, checks included);
* bare: ``pydicom.dcmread`` + ``.pixel_array`` (pydicom's default plugin order) + a float32
  linear window + ``PIL resize`` to 512x512 (Lanczos with ``reducing_gap=2``, as fast as ours).

It also times decode-only ``pixel_array(ds, decoding_plugin=...)`` for every installed plugin
per syntax (synthetic files + the shared real files when present), which is how the preferred
plugins in ``cxr.pixels._PLUGIN_PREFERENCE`` were chosen. Prints tables and writes
``<out>/ingest-<date>.json`` with machine info. If ours is below 20 images/s on uncompressed
input (or with ``--profile``) it prints a cProfile of the uncompressed chain.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    JPEG2000,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, relative_args, repo_relative, scrub_paths
from bench.common import machine_info as common_machine_info
from cxr.pixels import PixelConfig, decode_dicom, decoder_name, plugin_order

SHARED = REPO.parent / "shared" / "data" / "dicom"
REAL_FILES = {
    "real RG1 J2K lossless 1955x1841": SHARED / "pydicom_data_RG1" / "RG1_J2KR.dcm",
    "real RG1 J2K lossy 1955x1841": SHARED / "pydicom_data_RG1" / "RG1_J2KI.dcm",
    "real SIIM JPEG baseline 1024x1024": SHARED
    / "torchxrayvision_tests"
    / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
}
PACKAGES = [
    "numpy",
    "pydicom",
    "pillow",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "pyjpegls",
    "python-gdcm",
]


def phantom(rows: int, cols: int, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A chest-like (rows, cols) uint16 image: body ellipse, two lungs, spine, noise."""
    rng = np.random.default_rng(seed)
    y = (np.arange(rows, dtype=np.float32) / rows)[:, None]
    x = (np.arange(cols, dtype=np.float32) / cols)[None, :]
    body = np.exp(-((((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.5) ** 2) ** 3))
    lungs = np.exp(-((((np.abs(x - 0.5) - 0.2) / 0.13) ** 2 + ((y - 0.45) / 0.28) ** 2) ** 2))
    spine = np.exp(-(((x - 0.5) / 0.05) ** 2)) * (y > 0.1)
    img = 0.15 + 0.6 * body - 0.45 * lungs * body + 0.35 * spine * body
    img = img + rng.normal(0.0, 0.02, img.shape).astype(np.float32)
    top = (1 << bits) - 1
    return np.clip(img * top, 0, top).astype(np.uint16)


def base_dataset(arr: np.ndarray, bits: int) -> Dataset:
    """DX For Presentation dataset holding ``arr`` uncompressed."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.BodyPartExamined = "DX", "CHEST"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.WindowCenter, ds.WindowWidth = 2 ** (bits - 1), 2**bits
    ds.PixelData = arr.tobytes()
    return ds


def build_files(folder: Path, rows: int, cols: int) -> dict[str, Path]:
    """Write the phantom in every syntax; returns {label: path}."""
    arr = phantom(rows, cols)
    files: dict[str, Path] = {}

    def save(label: str, ds: Dataset) -> None:
        path = folder / f"{len(files):02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[label] = path

    save("Explicit VR LE (uncompressed)", base_dataset(arr, 12))
    for label, tsyntax, plugin, kwargs in [
        ("RLE Lossless", RLELossless, "pylibjpeg", {}),
        ("JPEG-LS Lossless", JPEGLSLossless, "pyjpegls", {}),
        ("JPEG 2000 Lossless", JPEG2000Lossless, "pylibjpeg", {}),
        ("JPEG 2000 (lossy 20:1)", JPEG2000, "pylibjpeg", {"j2k_cr": [20]}),
    ]:
        ds = base_dataset(arr, 12)
        ds.compress(tsyntax, arr, encoding_plugin=plugin, **kwargs)
        save(label, ds)
    # 8-bit JPEG baseline: pydicom has no JPEG encoder, so Pillow encodes and we encapsulate.
    arr8 = (arr >> 4).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr8).save(buf, format="JPEG", quality=90)
    ds = base_dataset(arr8, 8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    save("JPEG Baseline 8-bit", ds)
    return files


def bare_loop(path: Path, size: int) -> np.ndarray:
    """The fair baseline: read, decode (pydicom default plugin), float32 window, resize."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    arr -= center - width / 2
    arr *= 255.0 / width
    np.clip(arr, 0, 255, out=arr)
    img = Image.fromarray(arr.astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0))


def default_plugin(tsyntax: str) -> str:
    """The plugin pydicom tries first when none is pinned (insertion order of available)."""
    decoder = get_decoder(tsyntax)
    if not pydicom.uid.UID(tsyntax).is_encapsulated:
        return decoder_name(tsyntax, "")
    first = next(iter(decoder._available), "")  # pydicom tries plugins in this order
    return decoder_name(tsyntax, first)


def time_pair(path: Path, n: int, size: int) -> dict[str, Any]:
    """Interleaved timings of ours vs bare (order alternates each round)."""
    cfg = PixelConfig(image_size=size)
    for _ in range(2):  # warm-up: imports, allocator, page cache
        decode_dicom(path, cfg)
        bare_loop(path, size)
    ours: list[float] = []
    bare: list[float] = []
    for i in range(n):
        order = [("ours", ours), ("bare", bare)]
        for name, sink in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            if name == "ours":
                decode_dicom(path, cfg)
            else:
                bare_loop(path, size)
            sink.append(time.perf_counter() - start)
    ours_med, bare_med = statistics.median(ours), statistics.median(bare)
    return {
        "ours_median_s": ours_med,
        "bare_median_s": bare_med,
        "ours_img_per_s": 1.0 / ours_med,
        "bare_img_per_s": 1.0 / bare_med,
        "ratio": bare_med / ours_med,
        "ours_times_s": ours,
        "bare_times_s": bare,
    }


def time_shard_path(path: Path, n: int, size: int, tmp: Path) -> float:
    """Images/s of the real ``cxr_images`` unit of work: ``process_shard`` over ``n`` images
    (plan slice read, decode + chain, per-image stats, zstd Parquet shard written atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxr.images import ShardTask, process_shard

    work = tmp / f"shard_{path.stem}"
    work.mkdir(exist_ok=True)
    plan = pa.table(
        {
            "image_id": [f"img_{i:05d}" for i in range(n)],
            "study_id": ["stu_0"] * n,
            "patient_id": ["pat_0"] * n,
            "file_id": [f"fil_{i}" for i in range(n)],
            "kind": ["dicom"] * n,
            "view_position": ["PA"] * n,
            "is_frontal": [True] * n,
            "file_sha256": ["0" * 64] * n,
            "rel_path": [path.name] * n,
            "shard_index": [0] * n,
        }
    )
    pq.write_table(plan, work / "plan.parquet")
    cfg = PixelConfig(image_size=size)
    best = float("inf")
    for attempt in range(2):  # first pass warms the page cache and imports
        task = ShardTask(shard_index=0, input_hash=f"bench-{attempt}", num_items=n)
        start = time.perf_counter()
        summary = process_shard(task, path.parent, work / "plan.parquet", work, cfg)
        best = min(best, time.perf_counter() - start)
        assert summary["num_images"] == n, summary
    return n / best


def time_plugins(path: Path, reps: int) -> dict[str, float]:
    """Median decode-only seconds per installed plugin (``pixel_array`` on a read dataset)."""
    ds = pydicom.dcmread(path)
    tsyntax = ds.file_meta.TransferSyntaxUID
    out: dict[str, float] = {}
    if not tsyntax.is_encapsulated:
        return out
    reference = None
    for plugin in get_decoder(tsyntax).available_plugins:
        times = []
        try:
            arr = pixel_array(ds, decoding_plugin=plugin)
            for _ in range(reps):
                start = time.perf_counter()
                arr = pixel_array(ds, decoding_plugin=plugin)
                times.append(time.perf_counter() - start)
        except Exception as exc:  # a plugin that cannot decode this file
            print(f"  {plugin} failed on {path.name}: {exc}")
            continue
        name = decoder_name(tsyntax, plugin)
        if reference is None:
            reference = arr
        elif not np.array_equal(arr, reference):
            diff = np.abs(arr.astype(np.int64) - reference.astype(np.int64))
            name += f" (max diff {int(diff.max())} vs first)"
        out[name] = statistics.median(times)
    return out


def machine_info() -> dict[str, Any]:
    """CPU count, load, platform and decoder package versions."""
    return common_machine_info(PACKAGES, load_key="load_average_start")


def profile_uncompressed(path: Path, size: int, n: int = 20) -> str:
    cfg = PixelConfig(image_size=size)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        decode_dicom(path, cfg)
    prof.disable()
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(12)
    return stream.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="timed images per syntax and loop")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--cols", type=int, default=2500)
    parser.add_argument("--size", type=int, default=512, help="output side")
    parser.add_argument("--plugin-reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--profile", action="store_true", help="always print the cProfile")
    args = parser.parse_args()

    info = machine_info()
    print(
        f"cpus={info['cpu_count']} load={info['load_average_start']} "
        f"python={info['python']} pydicom={info['versions']['pydicom']}"
    )
    results: list[dict[str, Any]] = []
    plugins: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        files = build_files(Path(tmp), args.rows, args.cols)
        for label, path in files.items():
            tsyntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
            timing = time_pair(path, args.n, args.size)
            timing["shard_path_img_per_s"] = time_shard_path(path, args.n, args.size, Path(tmp))
            timing["shard_path_ratio"] = timing["shard_path_img_per_s"] / timing["bare_img_per_s"]
            ours_plugin = decoder_name(tsyntax, plugin_order(tsyntax)[0])
            row = {
                "syntax": label,
                "transfer_syntax": str(tsyntax),
                "file_mb": path.stat().st_size / 1e6,
                "ours_plugin": ours_plugin,
                "bare_plugin": default_plugin(tsyntax),
                **timing,
            }
            results.append(row)
            print(
                f"  {label}: ours {row['ours_img_per_s']:.1f}/s, bare {row['bare_img_per_s']:.1f}/s"
            )
            reps = max(2, args.plugin_reps // 2) if "2000 Lossless" in label else args.plugin_reps
            if tsyntax.is_encapsulated:
                plugins[f"synthetic {label} {args.rows}x{args.cols}"] = time_plugins(path, reps)
        uncompressed = files["Explicit VR LE (uncompressed)"]
        profile_text = ""
        if results[0]["ours_img_per_s"] < 20 or args.profile:
            profile_text = profile_uncompressed(uncompressed, args.size)
    for label, path in REAL_FILES.items():
        if path.exists():
            plugins[label] = time_plugins(path, args.plugin_reps)
    info["load_average_end"] = os.getloadavg()

    print()
    print(f"Per-core throughput, {args.rows}x{args.cols} -> {args.size}x{args.size}, n={args.n}")
    header = f"{'syntax':<30} {'ours plugin':<20} {'ours img/s':>10} {'bare plugin':<20}"
    print(header + f" {'bare img/s':>10} {'ours/bare':>9} {'shard img/s':>11} {'shard/bare':>10}")
    for row in results:
        print(
            f"{row['syntax']:<30} {row['ours_plugin']:<20} {row['ours_img_per_s']:>10.1f} "
            f"{row['bare_plugin']:<20} {row['bare_img_per_s']:>10.1f} {row['ratio']:>9.2f} "
            f"{row['shard_path_img_per_s']:>11.1f} {row['shard_path_ratio']:>10.2f}"
        )
    print()
    print("Decode-only ms per plugin (pixel_array, median)")
    for label, times in plugins.items():
        cells = ", ".join(f"{name} {sec * 1000:.1f}" for name, sec in times.items())
        print(f"  {label}: {cells}")
    if profile_text:
        print()
        print("cProfile of decode_dicom on the uncompressed file:")
        print(profile_text)

    args.out.mkdir(parents=True, exist_ok=True)
    out_path = args.out / f"ingest-{dt.date.today().isoformat()}.json"
    payload = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": relative_args(args),
        "machine": info,
        "bare_loop": "dcmread + pixel_array (default plugin) + float32 window + "
        "PIL Lanczos resize to size x size with reducing_gap=2 (no aspect crop)",
        "targets": {"ours_vs_bare_min_ratio": 0.8, "uncompressed_min_img_per_s": 20},
        "shard_path": "cxr.images.process_shard over n images of the file: plan read, decode, "
        "chain, pixel stats, zstd Parquet shard written atomically (the cxr_images unit of work)",
        "results": results,
        "decode_only_s": plugins,
        "profile": scrub_paths(profile_text) if profile_text else profile_text,
    }
    out_path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {repo_relative(out_path)}")


if __name__ == "__main__":
    main()
