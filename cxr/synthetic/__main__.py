"""Command line: ``python -m cxr.synthetic OUT_DIR --studies N --seed S``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cxr.synthetic.archive import generate_archive


def main(argv: list[str] | None = None) -> int:
    """Generates an archive and prints a one-line summary."""
    parser = argparse.ArgumentParser(
        prog="python -m cxr.synthetic",
        description="Write a synthetic MIMIC-CXR-like archive (DICOM + reports + ground truth).",
    )
    parser.add_argument("out_dir", type=Path, help="archive root to create")
    parser.add_argument("--studies", type=int, default=120, help="number of studies (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--bad-files",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write broken / out-of-policy files (default: yes)",
    )
    parser.add_argument(
        "--size-scale", type=float, default=1.0, help="scale of the native image sizes"
    )
    parser.add_argument(
        "--native-size",
        type=str,
        default=None,
        metavar="ROWSxCOLS",
        help="force every radiograph to this size, e.g. 3000x2500",
    )
    args = parser.parse_args(argv)
    native = None
    if args.native_size:
        try:
            rows, cols = (int(x) for x in args.native_size.lower().split("x"))
        except ValueError:
            parser.error(f"--native-size must look like 3000x2500, got {args.native_size!r}")
        native = (rows, cols)
    start = time.perf_counter()
    summary = generate_archive(
        args.out_dir,
        num_studies=args.studies,
        seed=args.seed,
        bad_files=args.bad_files,
        size_scale=args.size_scale,
        native_size=native,
    )
    print(f"wrote {summary.one_line()} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
