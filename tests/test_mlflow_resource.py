"""The MLflow resource keeps the store and every artifact under the storage root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.resources import MLflowResource, StorageResource, use_tracking_uri


@pytest.fixture
def no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def _artifact_root(resource: MLflowResource, storage: StorageResource) -> str:
    import mlflow

    experiment_id = resource.experiment_id(storage)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_text("x", "probe.txt")
        return run.info.artifact_uri


@pytest.mark.parametrize("explicit", [False, True], ids=["default-store", "explicit-sqlite-uri"])
def test_artifacts_of_a_database_store_live_under_the_storage_root(
    tmp_path: Path, monkeypatch, no_tracking_env, explicit: bool
) -> None:
    """With a sqlite store MLflow would write artifacts to ./mlruns of the logging process."""
    monkeypatch.chdir(tmp_path)
    storage = StorageResource(root=str(tmp_path / "storage"))
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}" if explicit else ""
    root = _artifact_root(MLflowResource(tracking_uri=uri, experiment="probe"), storage)
    assert root.startswith((tmp_path / "storage" / "mlflow" / "artifacts").as_uri()), root
    assert (Path(root.removeprefix("file://")) / "probe.txt").is_file()
    assert not (tmp_path / "mlruns").exists()


def test_use_tracking_uri_does_not_export_the_variable(tmp_path: Path, no_tracking_env) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'a.db'}"
    use_tracking_uri(uri)
    assert mlflow.get_tracking_uri() == uri
    assert "MLFLOW_TRACKING_URI" not in os.environ
