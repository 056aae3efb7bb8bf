"""Shared fixtures. Tests run offline, quiet, and never touch the user's storage or $HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.update(
    {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
)
for _var in (
    "CHEXMIX_SOURCE_ROOT",
    "CHEXMIX_SOURCE_LAYOUT",
    "CHEXMIX_STORAGE_ROOT",
    "CHEXMIX_ID_SALT",
    "RAY_ADDRESS",
    "MLFLOW_TRACKING_URI",  # tests keep their MLflow store under their own storage root
):
    os.environ.pop(_var, None)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TEST_SALT = "test-salt-0123456789abcdef"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real chest X-ray material next to the repo (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}; CI clones it next to the repo")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _dagster_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path_factory.getbasetemp() / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
