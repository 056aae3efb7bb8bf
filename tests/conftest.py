"""Shared fixtures. Tests run offline, quiet, and never touch the user's storage or $HOME."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

# absl (imported by rouge-score) creates its logging handler at import with the sys.stderr of that
# moment; under pytest that is a capture stream. Any later run on a Dagster instance with a
# dagster.yaml calls logging.config.dictConfig, which closes every handler of the process, and
# absl's close() closes its stream unless it is sys.stderr at that moment: pytest's capture file
# was closed ("I/O operation on closed file" in whichever test ran next with capsys, e.g.
# test_run_times, and all later stderr lost). Imported here against the real stderr, which absl
# never closes.
with contextlib.redirect_stderr(sys.__stderr__):
    import absl.logging  # noqa: F401

os.environ.update(
    {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # The suite's short-lived local Rays run without auth. They are NOT loopback-only (Ray
        # 2.60 turns a 127.0.0.1 node address into the host's and listens on all interfaces),
        # so this is for build machines whose ports nobody else reaches; the production default
        # (token auth) is tested end to end in test_ray_startup.py.
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
