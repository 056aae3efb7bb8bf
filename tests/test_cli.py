"""The ``chexmix`` command: help on every subcommand, exit codes, delegation, doctor, and the
DAGSTER_HOME default that makes README commands work from a plain shell."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr import cli
from cxr.catalog import Catalog
from cxr.lineage import LineageRecord, record
from pipelines import instance as instance_module

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def plain_shell(tmp_path, monkeypatch) -> Path:
    """No DAGSTER_HOME (as in a fresh terminal); the 'project' is a temp folder."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setattr(instance_module, "PACKAGE_PARENT", tmp_path / "project")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "pyproject.toml").write_text("")
    storage = tmp_path / "storage"
    monkeypatch.setenv("CHEXMIX_STORAGE_ROOT", str(storage))
    return storage


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_every_command_has_help(command, capsys, plain_shell):
    argv = ["--help"] if command is None else [command, "--help"]
    assert cli.main(argv) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith(f"usage: chexmix{'' if command is None else ' ' + command}")
    if command is None:
        assert all(name in out for name in cli.COMMANDS) and "Exit codes" in out


def test_usage_errors_exit_2(capsys, plain_shell):
    assert cli.main([]) == cli.EXIT_USAGE
    assert cli.main(["no-such-command"]) == cli.EXIT_USAGE
    assert cli.main(["doctor", "--no-such-option"]) == cli.EXIT_USAGE
    assert cli.main(["evaluate"]) == cli.EXIT_USAGE  # its subcommand is required
    assert cli.main(["evaluate", "run", "no-such-checkpoint"]) == cli.EXIT_USAGE
    assert "unknown checkpoint key" in capsys.readouterr().err


def test_plain_shell_gets_the_project_dagster_home(plain_shell, capsys, tmp_path):
    """`chexmix evaluate list` (and `python -m pipelines.evaluate list`) without DAGSTER_HOME."""
    from pipelines.evaluate import main as evaluate_main

    assert cli.main(["evaluate", "list"]) == cli.EXIT_OK
    home = tmp_path / "project" / ".dagster_home"
    assert os.environ["DAGSTER_HOME"] == str(home)
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    os.environ.pop("DAGSTER_HOME")
    assert evaluate_main(["list"]) == 0  # the module's own entry point too
    assert os.environ["DAGSTER_HOME"] == str(home)


def test_catalog_commands_default_to_the_storage_catalog(plain_shell, capsys):
    assert cli.main(["lineage", "ingest_quarantine"]) == cli.EXIT_FAILED  # no catalog yet
    assert "no DuckDB catalog at" in capsys.readouterr().err
    record(
        Catalog(plain_shell / "catalog.duckdb"),
        LineageRecord(
            asset_key="source_manifest",
            output_paths=[str(plain_shell / "source" / "manifest.parquet")],
            content_hash="ab" * 32,
            inputs={},
            config={},
            run_id="run-1",
            code_version="test",
        ),
    )
    assert cli.main(["lineage", "source_manifest"]) == cli.EXIT_OK
    assert "source_manifest" in capsys.readouterr().out
    assert cli.main(["lineage", "no_such_asset"]) == cli.EXIT_FAILED
    args = ["audit", "--checkpoint", "x", "--task", "findings", "--metric", "macro_auroc"]
    assert cli.main(args) == cli.EXIT_FAILED  # the catalog has no matching eval_results row


def test_leaderboard_prints_the_file_or_says_what_to_run(plain_shell, capsys):
    assert cli.main(["leaderboard"]) == cli.EXIT_FAILED
    assert "chexmix evaluate run --all" in capsys.readouterr().err
    board = plain_shell / "evaluation" / "leaderboard.md"
    board.parent.mkdir(parents=True)
    board.write_text("| checkpoint | macro AUROC |\n")
    assert cli.main(["leaderboard"]) == cli.EXIT_OK
    assert capsys.readouterr().out == "| checkpoint | macro AUROC |\n"


def test_demo_data_writes_the_archive_once(plain_shell, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo-data", str(out), "--studies", "2", "--size-scale", "0.2"]
    assert cli.main(argv) == cli.EXIT_OK
    assert (out / "ground_truth" / "labels.csv").is_file()
    assert cli.main(argv) == cli.EXIT_OK
    assert "already at" in capsys.readouterr().out


def test_doctor_on_a_temp_storage_root_from_a_plain_shell(tmp_path):
    """The real command line, in a fresh process without DAGSTER_HOME."""
    storage = tmp_path / "storage"
    done = subprocess.run(
        [sys.executable, "-m", "cxr.cli", "doctor", "--storage-root", str(storage)],
        env=_env(CHEXMIX_STORAGE_ROOT=str(tmp_path / "unused")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == cli.EXIT_OK, done.stdout + done.stderr
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line[:4].strip()}
    for name in ("python", "torch", "ray", "storage", "mlflow", "catalog", "DAGSTER_HOME"):
        assert name in lines, done.stdout
    assert lines["storage"].startswith("OK") and str(storage) in lines["storage"]
    assert lines["catalog"].startswith("WARN")  # nothing materialized there yet
    assert "JPEG 2000 Lossless" in done.stdout and "pylibjpeg-openjpeg" in done.stdout
    assert ".dagster_home" in lines["DAGSTER_HOME"]  # defaulted, not "not set"
    assert "0 failed" in done.stdout


def test_doctor_fails_and_says_what_to_fix(plain_shell, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    assert cli.main(["doctor", "--storage-root", str(blocker / "storage")]) == cli.EXIT_FAILED
    out = capsys.readouterr().out
    assert "FAIL  storage root" in out and "CHEXMIX_STORAGE_ROOT" in out
    assert "FAIL  ray" in out and "RAY_AUTH_TOKEN_PATH" in out
    assert "-> fix:" in out


def test_demo_data_default_is_the_makefiles():
    import re

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert int(re.search(r"^DEMO_STUDIES \?= (\d+)$", makefile, re.M).group(1)) == cli.DEMO_STUDIES
