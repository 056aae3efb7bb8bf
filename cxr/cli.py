"""``chexmix``: one command for the pipeline's tools.

    chexmix demo-data [OUT] [--studies N] [--seed S]   the synthetic demo archive
    chexmix evaluate list | register PATH | run ...    evaluate checkpoints (no daemon needed)
    chexmix audit [CATALOG] --checkpoint K --task T --metric M ...   one number back to the archive
    chexmix lineage [CATALOG] TARGET                   the upstream chain of an asset or path
    chexmix leaderboard [--rebuild]                    print (or rebuild) the leaderboard
    chexmix doctor [--storage-root PATH]               check the installation and environment

Each subcommand delegates to the module that owns it (``cxr.synthetic``,
``pipelines.evaluate``, ``evaluation.audit``, ``cxr.lineage``); ``chexmix <command> --help``
shows its options. Settings come from the environment as everywhere else
(``CHEXMIX_STORAGE_ROOT``, ``CHEXMIX_SOURCE_ROOT``, ...); ``DAGSTER_HOME`` defaults to the
project's ``.dagster_home``, as ``make`` sets it. CATALOG defaults to
``<storage root>/catalog.duckdb``.

Exit codes: 0 success; 1 the command ran and failed (a failed evaluation, no matching row, a
missing leaderboard, a doctor check that FAILED); 2 usage error (unknown option or checkpoint
key).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DEMO_STUDIES = 1000  # as `make demo` (tests/test_cli.py checks the Makefile agrees)
SUPPORTED_PYTHON = (3, 11)


# ----------------------------------------------------------------------------------------------
# Delegation


@contextlib.contextmanager
def _prog(name: str) -> Iterator[None]:
    """Make a delegate's argparse call itself ``chexmix <name>`` in usage and --help."""
    before = sys.argv[0] if sys.argv else ""
    if sys.argv:
        sys.argv[0] = f"chexmix {name}"
    else:
        sys.argv.append(f"chexmix {name}")
    try:
        yield
    finally:
        sys.argv[0] = before


def _storage_root() -> Path:
    from pipelines.resources import StorageResource

    return StorageResource().root_path


def _run_on_catalog(name: str, main: Callable[[list[str] | None], int], argv: list[str]) -> int:
    """Run a catalog reader; CATALOG defaults to ``<storage>/catalog.duckdb`` and must exist."""
    if any(a in ("-h", "--help") for a in argv):
        return _run_delegate(name, main, argv)
    given = [a for a in argv if a.endswith(".duckdb")]
    if not given:
        given = [str(_storage_root() / "catalog.duckdb")]
        argv = [*given, *argv]
    if not Path(given[0]).is_file():
        sys.stderr.write(
            f"error: no DuckDB catalog at {given[0]}: materialize the assets first (`make demo`), "
            "or pass the catalog path / set CHEXMIX_STORAGE_ROOT\n"
        )
        return EXIT_FAILED
    import duckdb

    try:
        return _run_delegate(name, main, argv)
    except duckdb.Error as exc:  # e.g. no eval_results table before any evaluation
        sys.stderr.write(f"error: cannot answer from the catalog {given[0]}: {exc}\n")
        return EXIT_FAILED


def _run_delegate(name: str, main: Callable[[list[str] | None], int], argv: list[str]) -> int:
    with _prog(name):
        try:
            return int(main(argv) or 0)
        except SystemExit as done:  # argparse: --help (0) or a usage error (2)
            return done.code if isinstance(done.code, int) else EXIT_USAGE


def cmd_evaluate(argv: list[str]) -> int:
    """``chexmix evaluate ...`` = ``python -m pipelines.evaluate ...``."""
    from pipelines.evaluate import main

    return _run_delegate("evaluate", main, argv)


def cmd_audit(argv: list[str]) -> int:
    """``chexmix audit ...`` = ``python -m evaluation.audit ...`` (catalog defaulted)."""
    from evaluation.audit import main

    return _run_on_catalog("audit", main, argv)


def cmd_lineage(argv: list[str]) -> int:
    """``chexmix lineage ...`` = ``python -m cxr.lineage ...`` (catalog defaulted)."""
    from cxr.lineage import main

    return _run_on_catalog("lineage", main, argv)


def cmd_demo_data(argv: list[str]) -> int:
    """``chexmix demo-data [OUT]``: ``python -m cxr.synthetic`` with ``make data``'s defaults."""
    from cxr.synthetic.__main__ import main

    parser = argparse.ArgumentParser(
        prog="chexmix demo-data",
        description="Write the synthetic demo archive (as `make data`); every other option of "
        "`python -m cxr.synthetic` is passed on (see `python -m cxr.synthetic --help`).",
    )
    parser.add_argument(
        "out_dir",
        nargs="?",
        default=os.environ.get("CHEXMIX_SOURCE_ROOT", "data/demo"),
        help="archive root (default: $CHEXMIX_SOURCE_ROOT or data/demo)",
    )
    parser.add_argument("--studies", type=int, default=DEMO_STUDIES, help="default %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default %(default)s")
    parser.add_argument(
        "--force", action="store_true", help="write even if an archive is already there"
    )
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    out = Path(args.out_dir)
    if (out / "ground_truth" / "labels.csv").is_file() and not args.force:
        sys.stdout.write(f"demo archive already at {out} (--force to rewrite)\n")
        return EXIT_OK
    forwarded = [str(out), "--studies", str(args.studies), "--seed", str(args.seed), *rest]
    return _run_delegate("demo-data", main, forwarded)


def cmd_leaderboard(argv: list[str]) -> int:
    """``chexmix leaderboard``: print ``<storage>/evaluation/leaderboard.md`` (or rebuild it)."""
    parser = argparse.ArgumentParser(
        prog="chexmix leaderboard",
        description="Print the leaderboard of every evaluated checkpoint (markdown).",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="materialize the leaderboard asset first (a Dagster run, as the sensor does)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    board = _storage_root() / "evaluation" / "leaderboard.md"
    if args.rebuild:
        from pipelines import instance
        from pipelines.evaluate import rebuild_leaderboard

        if not rebuild_leaderboard(instance.dagster_instance()):
            sys.stderr.write("error: the leaderboard run failed; see the Dagster UI / logs\n")
            return EXIT_FAILED
    if not board.is_file():
        sys.stderr.write(
            f"error: no leaderboard at {board}: evaluate checkpoints first "
            "(`chexmix evaluate run --all`)\n"
        )
        return EXIT_FAILED
    sys.stdout.write(board.read_text())
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# Doctor


@dataclass
class Finding:
    """One doctor check: status ``OK`` / ``WARN`` / ``FAIL``, what was found, how to fix it."""

    status: str
    name: str
    detail: str
    fix: str = ""


def _check_python() -> list[Finding]:
    version = platform.python_version()
    if sys.version_info[:2] == SUPPORTED_PYTHON:
        return [Finding("OK", "python", f"{version} at {sys.executable}")]
    return [
        Finding(
            "FAIL",
            "python",
            f"{version}; the pinned stack is verified on Python 3.11 only",
            "create the venv with python3.11 (`make venv`)",
        )
    ]


def _check_torch() -> list[Finding]:
    try:
        import torch
    except ImportError as exc:
        return [Finding("FAIL", "torch", f"not importable: {exc}", "`make venv`")]
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return [Finding("OK", "torch", f"{torch.__version__} ({build}); devices: {names}")]
    if torch.version.cuda:
        return [
            Finding(
                "WARN",
                "torch",
                f"{torch.__version__} ({build}) but no CUDA device is visible: CPU only",
                "check the driver (`nvidia-smi`) and CUDA_VISIBLE_DEVICES",
            )
        ]
    return [
        Finding(
            "OK",
            "torch",
            f"{torch.__version__} ({build}); device: cpu (GPUs: README 'GPU install')",
        )
    ]


TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (8-bit)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (12-bit)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}


def _check_decoders() -> list[Finding]:
    try:
        from cxr.pixels import decoder_name, plugin_order
    except ImportError as exc:
        return [Finding("FAIL", "decoders", f"pydicom stack not importable: {exc}", "`make venv`")]
    found = []
    for uid, name in TRANSFER_SYNTAXES.items():
        try:
            plugins = plugin_order(uid)
        except (NotImplementedError, ValueError) as exc:
            plugins, error = [], str(exc)
        else:
            error = ""
        if plugins:
            libraries = ", ".join(dict.fromkeys(decoder_name(uid, p) for p in plugins))
            found.append(Finding("OK", f"decoder {name}", libraries))
        else:
            found.append(
                Finding(
                    "FAIL",
                    f"decoder {name}",
                    f"no installed decoder ({error or 'no plugin available'}); such files are "
                    "quarantined as unsupported_transfer_syntax",
                    "install the pinned pylibjpeg-* packages (`pip install -c constraints.txt "
                    "-e .`) or python-gdcm",
                )
            )
    return found


def _check_ray() -> list[Finding]:
    import importlib.metadata
    import importlib.util
    from types import SimpleNamespace

    if importlib.util.find_spec("ray") is None:  # not imported: cxr/ stays free of Ray
        return [Finding("FAIL", "ray", "not installed", "`make venv`")]
    ray = SimpleNamespace(__version__=importlib.metadata.version("ray"))
    address = os.environ.get("RAY_ADDRESS", "")
    if not address:
        from pipelines.on_ray.auth import local_token_path

        mode = os.environ.get("RAY_AUTH_MODE", "token")
        auth = f"token auth ({local_token_path()})" if mode == "token" else f"auth {mode}"
        return [
            Finding(
                "OK" if mode == "token" else "WARN",
                "ray",
                f"{ray.__version__}; no RAY_ADDRESS: steps start a local Ray, {auth}",
                "" if mode == "token" else "unset RAY_AUTH_MODE (its ports are not loopback-only)",
            )
        ]
    token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    default = Path("~/.ray/auth_token").expanduser()
    if not token and not default.is_file():
        return [
            Finding(
                "FAIL",
                "ray",
                f"{ray.__version__}; RAY_ADDRESS={address} but no token for its token auth",
                "export RAY_AUTH_TOKEN_PATH=<the cluster's token file> (README: cluster)",
            )
        ]
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and (not Path(path).is_file() or Path(path).stat().st_mode & 0o077):
        return [
            Finding(
                "FAIL",
                "ray",
                f"RAY_AUTH_TOKEN_PATH={path} is missing or readable by other users",
                f"point it at the cluster's token file and `chmod 600 {path}`",
            )
        ]
    return [Finding("OK", "ray", f"{ray.__version__}; cluster {address} with token auth")]


def _check_storage(root: Path) -> list[Finding]:
    from cxr.storage import StorageWriteError, ensure_writable_dir

    try:
        ensure_writable_dir(root)
    except StorageWriteError as exc:
        return [
            Finding(
                "FAIL",
                "storage root",
                str(exc),
                "set CHEXMIX_STORAGE_ROOT to a writable folder (or --storage-root)",
            )
        ]
    return [Finding("OK", "storage root", f"{root} is writable")]


def _check_mlflow(root: Path) -> list[Finding]:
    from pipelines.resources import MLflowResource, StorageResource

    try:
        uri = MLflowResource().resolved_uri(StorageResource(root=str(root)))
    except OSError as exc:
        return [
            Finding("FAIL", "mlflow", f"cannot create the store's folder: {exc}", "see storage")
        ]
    if not uri.startswith("sqlite:///"):
        try:
            import mlflow  # noqa: F401
        except ImportError as exc:
            return [Finding("FAIL", "mlflow", f"not importable: {exc}", "`make venv`")]
        return [Finding("OK", "mlflow", f"tracking URI {uri} (not contacted)")]
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        parent_ok = path.parent.exists() or os.access(root, os.W_OK)
        status = "OK" if parent_ok else "FAIL"
        return [
            Finding(
                status,
                "mlflow",
                f"store {path} not created yet (the first training or tokenizer run creates it)",
                "" if parent_ok else "make its folder writable",
            )
        ]
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.Error as exc:
        return [
            Finding(
                "FAIL",
                "mlflow",
                f"store {path} is unreadable: {exc}",
                "move it aside; the next run creates a fresh store",
            )
        ]
    if "experiments" not in tables:
        return [Finding("FAIL", "mlflow", f"{path} is not an MLflow store", "move it aside")]
    return [Finding("OK", "mlflow", f"store {path}: {runs} runs")]


def _check_catalog(root: Path) -> list[Finding]:
    path = root / "catalog.duckdb"
    if not path.exists():
        return [
            Finding(
                "WARN",
                "catalog",
                f"no DuckDB catalog at {path} yet",
                "materialize the assets (`make demo`) to create it",
            )
        ]
    try:
        import duckdb

        with contextlib.closing(duckdb.connect(str(path), read_only=True)) as con:
            names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables")]
    except Exception as exc:  # duckdb raises its own exception classes
        return [
            Finding(
                "FAIL",
                "catalog",
                f"{path} is not readable: {exc}",
                "stop the process holding it (a running materialization) or move it aside",
            )
        ]
    return [Finding("OK", "catalog", f"{path}: {len(names)} tables and views")]


def _check_dagster_home(defaulted: bool) -> list[Finding]:
    home = Path(os.environ["DAGSTER_HOME"])
    how = "default (project's .dagster_home)" if defaulted else "from $DAGSTER_HOME"
    config = home / "dagster.yaml"
    if not os.access(home, os.W_OK):
        return [
            Finding("FAIL", "DAGSTER_HOME", f"{home} is not writable", "export DAGSTER_HOME=...")
        ]
    if not config.is_file():
        return [
            Finding(
                "WARN",
                "DAGSTER_HOME",
                f"{home} ({how}) has no dagster.yaml: Dagster sends telemetry",
                f"printf 'telemetry:\\n  enabled: false\\n' > {config}",
            )
        ]
    return [Finding("OK", "DAGSTER_HOME", f"{home} ({how})")]


def run_doctor(storage_root: Path, dagster_home_defaulted: bool) -> list[Finding]:
    """Every check, in a fixed order (none starts Ray or writes outside the storage root)."""
    storage_root = Path(storage_root).expanduser().resolve()
    findings: list[Finding] = []
    for check in (
        _check_python,
        _check_torch,
        _check_decoders,
        _check_ray,
        lambda: _check_storage(storage_root),
        lambda: _check_mlflow(storage_root),
        lambda: _check_catalog(storage_root),
        lambda: _check_dagster_home(dagster_home_defaulted),
    ):
        try:
            findings.extend(check())
        except Exception as exc:  # the doctor reports; it never stops half-way
            findings.append(Finding("FAIL", "check", f"{type(exc).__name__}: {exc}"))
    return findings


def cmd_doctor(argv: list[str], dagster_home_defaulted: bool = False) -> int:
    """``chexmix doctor``: print each check and what to fix; exit 1 if any check FAILED."""
    parser = argparse.ArgumentParser(
        prog="chexmix doctor",
        description="Check the installation and environment; print what to fix. Exit 1 if "
        "any check FAILED (warnings do not fail).",
    )
    parser.add_argument(
        "--storage-root",
        type=Path,
        default=None,
        help="storage root to check (default: $CHEXMIX_STORAGE_ROOT or storage)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    findings = run_doctor(args.storage_root or _storage_root(), dagster_home_defaulted)
    width = max(len(f.name) for f in findings)
    for finding in findings:
        sys.stdout.write(f"{finding.status:<4}  {finding.name:<{width}}  {finding.detail}\n")
        if finding.fix and finding.status != "OK":
            sys.stdout.write(f"{'':<4}  {'':<{width}}  -> fix: {finding.fix}\n")
    failed = sum(f.status == "FAIL" for f in findings)
    warned = sum(f.status == "WARN" for f in findings)
    sys.stdout.write(f"\n{failed} failed, {warned} warnings, {len(findings)} checks\n")
    return EXIT_FAILED if failed else EXIT_OK


# ----------------------------------------------------------------------------------------------
# Entry point

COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "demo-data": (cmd_demo_data, "write the synthetic demo archive (as `make data`)"),
    "evaluate": (cmd_evaluate, "evaluate checkpoints: list | register PATH | run ..."),
    "audit": (cmd_audit, "trace one evaluation number back to the source archive"),
    "lineage": (cmd_lineage, "print the upstream chain of an asset or output path"),
    "leaderboard": (cmd_leaderboard, "print (or --rebuild) the leaderboard"),
    "doctor": (cmd_doctor, "check the installation and environment, say what to fix"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chexmix",
        description=__doc__.split("\n\n")[0].strip('"` '),
        epilog="Run `chexmix <command> --help` for a command's options. Exit codes: 0 success, "
        "1 the command failed, 2 usage error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``chexmix <command> ...`` to the command's own parser.

    Returns:
        The exit code (module docstring).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    from pipelines.instance import ensure_dagster_home

    defaulted = not os.environ.get("DAGSTER_HOME")
    ensure_dagster_home()  # every command works from a plain shell, as under `make`
    if not argv or argv[0] not in COMMANDS:
        parser = _parser()
        if not argv:
            parser.print_help()
            return EXIT_USAGE
        try:
            parser.parse_args(argv[:1])
        except SystemExit as done:  # --help (0), unknown command (2)
            return done.code if isinstance(done.code, int) else EXIT_USAGE
        return EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command == "doctor":
        return cmd_doctor(rest, dagster_home_defaulted=defaulted)
    return COMMANDS[command][0](rest)


if __name__ == "__main__":
    sys.exit(main())
