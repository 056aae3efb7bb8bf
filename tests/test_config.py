"""One source of truth for config: the Dagster config is generated from the core dataclasses."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pytest

from assets.evaluation import EVAL_ASSETS, EVAL_TASKS, FINDINGS, RETRIEVAL
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
    assert resolve(Core, values) == Core(width=4, ratios=(0.1, 0.2))  # the core's tuple
    assert field_docs(Core)["ratios"] == "Mask ratios."


def test_presets_are_overrides_and_the_core_validates():
    train, run = stage_settings(StageConfig(), 2)
    assert train.steps == TRAINING_PRESETS["demo"]["steps"] and train.stage == 2
    assert train.weight_decay == LMTrainConfig.weight_decay  # not in the preset: core default
    assert run.lm_preset == "tiny" and run.use_ray
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


@pytest.mark.parametrize(
    ("task", "asset"),
    list(zip(EVAL_TASKS, EVAL_ASSETS, strict=True)),
    ids=[t.name for t in EVAL_TASKS],
)
def test_every_core_evaluation_field_reaches_the_launchpad(task, asset):
    assert asset.key.to_user_string() == f"{task.name}_eval"
    offered = launchpad_fields(asset)
    expected = {f.name for f in dataclasses.fields(task.run)}
    expected |= {
        task.renames.get(f.name, f.name)
        for f in dataclasses.fields(task.core)
        if f.name not in task.asset_set
    }
    assert offered == expected, f"missing {expected - offered}, unexpected {offered - expected}"


def test_a_field_added_to_a_core_evaluation_config_reaches_the_launchpad():
    """What happens when e.g. a new switch is added to ``FindingsConfig``: nothing to copy."""

    @dataclasses.dataclass(frozen=True)
    class GrownFindingsConfig(FINDINGS.core):
        """Findings settings, one more.

        Attributes:
            pixel_baseline: Also score a probe on downsampled pixels.
        """

        pixel_baseline: bool = False

    grown = dataclasses.replace(FINDINGS, core=GrownFindingsConfig)
    schema = grown.config_class("Grown", "doc").model_json_schema()["properties"]
    assert (
        "Also score a probe on downsampled pixels. Unset: the default False."
        in (schema["pixel_baseline"]["description"])
    )
    assert "probe_c" in schema  # the inherited fields keep their docs
    assert "logistic-regression" in schema["probe_c"]["description"]
    _, core = grown.settings(grown.config_class("Grown", "doc")(pixel_baseline=True))
    assert core.pixel_baseline is True


def test_evaluation_run_config_resolves_through_the_core():
    config = EVAL_ASSETS[0].op.config_schema.config_type  # the launchpad schema
    assert "max_train_rows" in config.fields and "max_train_images" not in config.fields
    cls = FINDINGS.config_class("F", "doc")
    run, core = FINDINGS.settings(
        cls(max_train_rows=400, layer=2.0, candidate_layers=[0.25, 3.0], mask_ratios=[0.0])
    )
    assert core.max_train_images == 400 and core.layer == 2 and isinstance(core.layer, int)
    assert core.candidate_layers == (0.25, 3) and core.mask_ratios == (0.0,)
    assert run.max_validate_rows == 5000 and run.device == "cpu"  # run-level defaults
    assert FINDINGS.recorded(run, core)["max_train_rows"] == 400
    with pytest.raises(ValueError, match="retrieval prior"):
        RETRIEVAL.core_settings(
            RETRIEVAL.config_class("R", "doc")(prior="blank"), max_text_tokens=8
        )


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


def test_the_demo_run_config_is_valid_for_both_commands_of_make_demo():
    """pipelines/run_config/demo.yaml: every op entry fits its launchpad schema (materialize and
    `evaluate --config`), and every evaluation entry passes its core config's validation."""
    from pathlib import Path

    import yaml

    from pipelines.definitions import defs as load_defs
    from pipelines.evaluate import evaluation_run_config

    path = Path(__file__).resolve().parents[1] / "pipelines/run_config/demo.yaml"
    ops = yaml.safe_load(path.read_text())["ops"]
    defs = load_defs()
    covered = set()
    for job_name in ("curation_job", "evaluation_job"):
        job = defs.resolve_job_def(job_name)
        mine = {k: v for k, v in ops.items() if k in job.graph.node_dict}
        dg.validate_run_config(job, {"ops": mine})
        covered |= set(mine)
    assert covered == set(ops)  # no entry for an op that does not exist
    assert set(evaluation_run_config(path)["ops"]) == {f"{t.name}_eval" for t in EVAL_TASKS}
    for task in EVAL_TASKS:
        values = ops[f"{task.name}_eval"]["config"]
        task.settings(task.config_class("C", "doc")(**values))  # raises on a bad value
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(
            defs.resolve_job_def("evaluation_job"),
            {"ops": {"findings_eval": {"config": {"min_test_positivez": 3}}}},
        )
