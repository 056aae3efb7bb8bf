"""Checkpoint discovery for evaluation: published, dropped and registered checkpoints."""

import json
from pathlib import Path

import pytest

from pipelines.checkpoints.publish import publish_checkpoint
from pipelines.checkpoints.registry import discover, find, open_manifest, register
from pipelines.jobs import register_checkpoint_job
from pipelines.resources import StorageResource


def fake_train_lm_checkpoint(folder: Path, step: int = 3) -> Path:
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.safetensors").write_bytes(b"weights" * 10)
    (folder / "meta.json").write_text(json.dumps({"step": step, "train_config": {"stage": 2}}))
    (folder / "COMPLETE").write_text(f"{step}\n")
    return folder


def test_discovers_each_origin_with_a_stable_key(tmp_path):
    storage = tmp_path / "storage"
    source = fake_train_lm_checkpoint(tmp_path / "run" / "step_000003")
    publish_checkpoint(
        source, storage / "checkpoints" / "stage2" / "step_000003-abcd", {"stage": 2}
    )
    publish_checkpoint(
        source, storage / "checkpoints" / "stage1-continued" / "step_000003-ef01", {"stage": 1}
    )
    fake_train_lm_checkpoint(storage / "checkpoints" / "external" / "my model")
    (storage / "checkpoints" / "external" / "half-written").mkdir()  # no marker: ignored
    fake_train_lm_checkpoint(storage / "checkpoints" / "local" / "stage1-x" / "step_000002")
    register(storage, fake_train_lm_checkpoint(tmp_path / "elsewhere" / "ckpt"), "reg-x")
    refs = {r.key: r for r in discover(storage)}
    assert set(refs) == {
        "stage2-step_000003-abcd",
        "stage1-continued-step_000003-ef01",
        "ext-my_model",
        "reg-x",
    }
    assert {r.origin for r in refs.values()} == {"published", "external", "registered"}
    before = refs["ext-my_model"].fingerprint
    (refs["ext-my_model"].path / "model" / "model.safetensors").write_bytes(b"changed!")
    assert find(storage, "ext-my_model").fingerprint != before
    with pytest.raises(KeyError, match="no complete checkpoint"):
        find(storage, "ext-gone")


def test_manifests_are_verified_or_built(tmp_path):
    storage = tmp_path / "storage"
    source = fake_train_lm_checkpoint(tmp_path / "run" / "step_000003")
    target = storage / "checkpoints" / "stage1" / "step_000003-abcd"
    published = publish_checkpoint(source, target, {"stage": 1})
    assert (
        open_manifest(find(storage, "stage1-step_000003-abcd"))["content_hash"]
        == (published["content_hash"])
    )
    (target / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta\.json"):
        open_manifest(find(storage, "stage1-step_000003-abcd"))
    fake_train_lm_checkpoint(storage / "checkpoints" / "external" / "m")
    manifest = open_manifest(find(storage, "ext-m"))
    assert manifest["step"] == 3 and "model/model.safetensors" in manifest["files"]


def test_register_refuses_incomplete_folders_and_bad_keys(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        register(tmp_path / "storage", tmp_path / "empty")
    folder = fake_train_lm_checkpoint(tmp_path / "ok")
    with pytest.raises(ValueError, match="may only use"):
        register(tmp_path / "storage", folder, "bad key!")


def test_the_ui_job_registers_a_checkpoint(tmp_path):
    folder = fake_train_lm_checkpoint(tmp_path / "ckpt")
    storage = tmp_path / "storage"
    result = register_checkpoint_job.execute_in_process(
        run_config={"ops": {"register_checkpoint": {"config": {"path": str(folder)}}}},
        resources={"storage": StorageResource(root=str(storage))},
    )
    assert result.success
    assert [r.key for r in discover(storage)] == ["reg-ckpt"]
