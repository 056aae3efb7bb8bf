"""The code location loads, resolves every job, and keeps its import cheap and layered."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

from pipelines.definitions import defs

REPO = Path(__file__).resolve().parents[1]


def test_definitions_load_and_every_job_resolves():
    definitions = defs()
    assert isinstance(definitions, dg.Definitions)
    repo = definitions.get_repository_def()
    for job in repo.get_all_jobs():
        assert job.name
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"source_manifest", "studies", "cxr_images", "ingest_quarantine"} <= keys
    checks = {k.name for k in repo.asset_graph.asset_check_keys}
    assert {"decode_success_rate", "no_empty_images", "every_file_accounted_for"} <= checks


def test_importing_the_definitions_module_is_lazy():
    code = (
        "import sys, pipelines.definitions;"
        "heavy = [m for m in ('ray', 'torch', 'mlflow', 'pydicom', 'duckdb', 'assets.cxr_images')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_models_and_evaluation_import_neither_dagster_nor_ray():
    offenders = []
    for folder in ("models", "evaluation", "cxr"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for banned in ("import dagster", "from dagster", "import ray", "from ray"):
                if banned in text:
                    offenders.append(f"{path.relative_to(REPO)}: {banned}")
    assert offenders == []


def test_workspace_and_pyproject_point_at_the_same_module():
    assert "module_name: pipelines.definitions" in (REPO / "workspace.yaml").read_text()
    assert 'module_name = "pipelines.definitions"' in (REPO / "pyproject.toml").read_text()
