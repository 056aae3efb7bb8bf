"""One source of truth for config: the Dagster config is generated from the core dataclasses."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pytest

from assets.stage_checkpoints import (
    ASSET_SET_FIELDS,
    TRAINING_PRESETS,
    StageConfig,
    TrainingRun,
    stage_checkpoints_assets,
    stage_settings,
)
from models.train_config import LMTrainConfig
from pipelines.config import config_class, field_docs, resolve, resolve_preset


def launchpad_fields(asset: dg.AssetsDefinition) -> set[str]:
    """The config fields the Dagster UI launchpad offers for ``asset``."""
    return set(asset.op.config_schema.config_type.fields)


@pytest.mark.parametrize("asset", stage_checkpoints_assets(), ids=lambda a: a.key.to_user_string())
def test_every_core_training_field_reaches_the_launchpad(asset):
    offered = launchpad_fields(asset)
    for core in (LMTrainConfig, TrainingRun):
        for field in dataclasses.fields(core):
            if field.name in ASSET_SET_FIELDS:
                continue
            assert field.name in offered, f"{core.__name__}.{field.name} is not in the launchpad"
    assert "preset" in offered


def test_a_new_core_field_appears_with_its_docstring():
    @dataclasses.dataclass(frozen=True)
    class Core:
        """A core config.

        Attributes:
            width: Model width, documented once
                over two lines.
            ratios: Mask ratios.
        """

        width: int = 8
        ratios: tuple[float, float] = (0.0, 0.5)

    generated = config_class("GeneratedConfig", "doc", [Core], {"p": {"width": 4}}, "p")
    schema = generated.model_json_schema()["properties"]
    assert set(schema) == {"preset", "width", "ratios"}
    assert "Model width, documented once over two lines." in schema["width"]["description"]
    assert "p: 4" in schema["width"]["description"]
    values = resolve_preset(generated(ratios=[0.1, 0.2]), {"p": {"width": 4}})
    assert resolve(Core, values) == Core(width=4, ratios=[0.1, 0.2])
    assert field_docs(Core)["ratios"] == "Mask ratios."


def test_presets_are_overrides_and_the_core_validates():
    train, run = stage_settings(StageConfig(), 2)
    assert train.steps == TRAINING_PRESETS["demo"]["steps"] and train.stage == 2
    assert train.batch_size == LMTrainConfig.batch_size  # not in the preset: the core default
    assert run.lm_preset == "small" and run.use_ray
    train, run = stage_settings(StageConfig(preset="radphi2", steps=7, lr=5e-4), 1)
    assert (train.steps, train.lr, train.dtype, train.compile) == (7, 5e-4, "bfloat16", True)
    assert train.loss_on == "all" and train.warmup_steps <= 6
    assert run.lm_preset == "radphi2" and run.use_gpu
    with pytest.raises(ValueError, match="lr must be > 0"):
        stage_settings(StageConfig(lr=-1.0), 1)
    with pytest.raises(ValueError, match="placement_strategy"):
        stage_settings(StageConfig(placement_strategy="ANYWHERE"), 1)
    with pytest.raises(ValueError, match="unknown preset"):
        stage_settings(StageConfig(preset="huge"), 1)


def test_scratch_duckdb_threads_come_from_one_setting(monkeypatch):
    from cxr.duck import DEFAULT_THREADS, THREADS_ENV, scratch_connection

    def threads(con) -> int:
        return int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert threads(scratch_connection()) == DEFAULT_THREADS
    monkeypatch.setenv(THREADS_ENV, "1")
    assert threads(scratch_connection()) == 1
    assert threads(scratch_connection(3)) == 3
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        scratch_connection()
