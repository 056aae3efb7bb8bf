"""Evaluation end to end: train two stages on a generated archive, let the checkpoint sensor
find the checkpoints, evaluate all four tasks per partition, drop a new checkpoint and see it
evaluated, compute the paired comparisons, rebuild the leaderboard, audit a number back to the
source manifest."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from pipeline_setup import local_resources

from assets.eval_comparisons import eval_comparisons
from assets.evaluation import EVAL_ASSETS
from assets.leaderboard import leaderboard
from cxr.synthetic import generate_archive
from pipelines.definitions import defs
from pipelines.partitions import checkpoints_partitions
from pipelines.resources import (
    use_tracking_uri,
)
from pipelines.sensors import checkpoint_sensor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
TASKS = {"findings", "inpainting", "report_generation", "retrieval"}
EVAL_CONFIG = {"n_boot": 40, "max_train_rows": 400}
FINDINGS = {**EVAL_CONFIG, "mask_ratios": [0.0, 0.4, 0.8], "min_test_positives": 2}
RUN_CONFIG = {
    "ops": {
        "findings_eval": {"config": FINDINGS},
        "inpainting_eval": {
            "config": {**EVAL_CONFIG, "mask_ratios": [0.4], "patterns": ["random", "block"]}
        },
        "report_generation_eval": {"config": {**EVAL_CONFIG, "max_new_tokens": 24}},
        "retrieval_eval": {"config": {"n_boot": 40}},  # retrieval reads no TRAIN rows
    }
}


def resources(archive: Path, storage: Path) -> dict:
    return local_resources(archive, storage, "evaluation-integration-salt")


def tick(instance, res: dict, cursor: str | None = None) -> dg.SensorResult:
    """One sensor evaluation, as the daemon runs it."""
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": res["storage"]}
    ) as context:
        return checkpoint_sensor(context)


def evaluate(instance, res: dict, key: str) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        EVAL_ASSETS, partition_key=key, instance=instance, resources=res, run_config=RUN_CONFIG
    )
    assert result.success
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 60-study archive through two debug training stages (in-process: no Ray here)."""
    archive = tmp_path_factory.mktemp("eval_archive")
    generate_archive(archive, num_studies=60, seed=11, bad_files=False, size_scale=0.4)
    storage = tmp_path_factory.mktemp("eval_storage")
    res = resources(archive, storage)
    definitions = defs()
    stage = {"config": {"lm_preset": "debug", "steps": 16, "batch_size": 4, "use_ray": False}}
    result = dg.materialize(
        list(definitions.assets),
        resources=res,
        # the stage-1-continued control arm is a third checkpoint to evaluate: not needed here
        selection=dg.AssetSelection.all()
        - dg.AssetSelection.groups("evaluation")
        - dg.AssetSelection.assets("stage1_continued_checkpoint"),
        run_config={
            "ops": {
                "cxr_images": {"config": {"use_ray": False, "image_size": 64}},
                "image_tokenizer": {
                    "config": {
                        "preset": "debug",
                        "steps": 20,
                        "batch_size": 8,
                        "real_check_images": 4,
                    }
                },
                "text_tokenizer": {"config": {"vocab_size": 300}},
                # larger validate / test splits than the default 10%, so AUROC has positives
                # to rank and the layer is chosen on VALIDATE rather than by the fallback
                "splits": {
                    "config": {
                        "train_fraction": 0.5,
                        "validate_fraction": 0.2,
                        "test_fraction": 0.3,
                    }
                },
                "token_shards": {"config": {"use_ray": False}},
                "stage1_checkpoint": stage,
                "stage2_checkpoint": stage,
            }
        },
    )
    assert result.success
    return archive, storage, res


@pytest.fixture(scope="module")
def evaluated(trained):
    """The sensor's first tick, and every run it requested executed."""
    res = trained[2]
    instance = dg.DagsterInstance.ephemeral()
    first = tick(instance, res)
    for request in first.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for run in first.run_requests:
        evaluate(instance, res, run.partition_key)
    return instance, first


def results(storage: Path, where: str = "TRUE") -> list[tuple]:
    con = duckdb.connect(str(storage / "catalog.duckdb"), read_only=True)
    try:
        return con.execute(
            f"SELECT checkpoint_id, task, method, metric, observation, mask_ratio, setting, value,"
            f" ci_low, ci_high, n, status FROM eval_results WHERE {where} ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()


def test_sensor_partitions_and_requests_each_checkpoint_once(trained, evaluated):
    instance, first = evaluated
    keys = sorted(r.partition_key for r in first.run_requests)
    assert len(keys) == 2 and keys[0].startswith("stage1-") and keys[1].startswith("stage2-")
    assert sorted(instance.get_dynamic_partitions(checkpoints_partitions.name)) == keys
    again = tick(instance, trained[2], first.cursor)
    assert not again.run_requests and not again.dynamic_partitions_requests


def test_every_checkpoint_has_all_four_tasks(trained, evaluated):
    _, storage, _ = trained
    rows = results(storage)
    by_checkpoint: dict[str, set[str]] = {}
    for row in rows:
        by_checkpoint.setdefault(row[0], set()).add(row[1])
    assert len(by_checkpoint) == 2 and all(t == TASKS for t in by_checkpoint.values())
    macro = [r for r in rows if r[3] == "macro_auroc" and r[2] == "model" and r[7] is not None]
    assert {r[5] for r in macro} == {0.0, 0.4, 0.8}
    for r in macro:
        assert 0.0 <= r[7] <= 1.0
        assert r[8] is None or r[8] <= r[7] <= r[9]  # no interval when resamples lack a class
    assert any(r[8] is not None for r in macro)
    # the layer is chosen on VALIDATE: every candidate's score is a row, TEST rows carry it
    for key in by_checkpoint:
        candidates = [r for r in rows if r[0] == key and r[3] == "validate_macro_auroc"]
        assert {r[6] for r in candidates} == {"layer 1", "layer 2"}  # the debug model's layers
        settings = {r[6] for r in macro if r[0] == key}
        assert len(settings) == 1 and settings <= {"layer 1", "layer 2"}
        chosen = [r[6] for r in candidates if r[11] == "ok: chosen"]
        assert chosen == list(settings)
    psnr = [r for r in rows if r[1] == "inpainting" and r[3] == "psnr_vs_reconstruction"]
    assert {r[2] for r in psnr} == {"model", "image_blind_mode_fill"}
    assert {r[6] for r in psnr} == {"random", "block"}
    green = [r for r in rows if r[3] == "green"]
    assert green and all(r[7] is None and r[11].startswith("skipped") for r in green)
    recall = [r for r in rows if r[1] == "retrieval" and r[2] == "model"]
    assert {r[3] for r in recall} >= {"i2t_recall@1", "t2i_recall@10"}
    # per-sample outputs kept for every task, so metrics can be recomputed without the model
    for key in by_checkpoint:
        for task in TASKS:
            assert (storage / "evaluation" / key / task / "samples.parquet").is_file()


def test_evaluation_runs_are_nested_under_training_runs_in_mlflow(trained, evaluated):
    import mlflow

    _, storage, _ = trained
    use_tracking_uri(f"sqlite:///{storage / 'mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    training = {r.info.run_id for r in runs if r.data.tags.get("stage")}
    evals = [r for r in runs if r.data.tags.get("task") in TASKS]
    assert len(evals) == 8
    assert all(r.data.tags.get("mlflow.parentRunId") in training for r in evals)


def test_rerun_is_idempotent(trained, evaluated):
    instance, first = evaluated
    _, storage, res = trained
    key = first.run_requests[0].partition_key
    where = f"checkpoint_id = '{key}' AND task = 'findings'"
    before = results(storage, where)
    again = dg.materialize(
        [EVAL_ASSETS[0]],
        partition_key=key,
        instance=instance,
        resources=res,
        run_config={"ops": {"findings_eval": RUN_CONFIG["ops"]["findings_eval"]}},
    )
    assert again.success
    assert results(storage, where) == before


def test_a_dropped_checkpoint_is_evaluated_by_the_sensor(trained, evaluated):
    instance, first = evaluated
    _, storage, res = trained
    # a train_lm checkpoint folder (COMPLETE marker, no checkpoint.json) copied in by a user
    source = next((storage / "checkpoints" / "local").glob("stage2-*/step_*"))
    shutil.copytree(source, storage / "checkpoints" / "external" / "user model 1")
    new = tick(instance, res, first.cursor)
    assert [r.partition_key for r in new.run_requests] == ["ext-user_model_1"]
    for request in new.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    evaluate(instance, res, "ext-user_model_1")
    assert {r[1] for r in results(storage, "checkpoint_id = 'ext-user_model_1'")} == TASKS
    board = dg.materialize(
        [eval_comparisons, leaderboard],
        instance=instance,
        resources=res,
        run_config={"ops": {"eval_comparisons": {"config": {"n_boot": 40}}}},
    )
    assert board.success
    con = duckdb.connect(str(storage / "catalog.duckdb"), read_only=True)
    paired = con.execute(
        "SELECT checkpoint_a, checkpoint_b, kind, task, metric, mask_ratio, diff, ci_low, "
        "ci_high, p_le_zero, n_patients FROM eval_comparisons"
    ).fetchall()
    con.close()
    stage1, stage2 = sorted(r.partition_key for r in first.run_requests)
    ablation = [r for r in paired if r[2] == "checkpoint"]
    # one stage-1 family: stage 2 against stage 1, in every task; the dropped copy has none
    assert {(r[0], r[1]) for r in ablation} == {(stage2, stage1)}
    assert {r[3] for r in ablation} == TASKS
    assert {r[5] for r in ablation if r[4] == "macro_auroc"} == {0.0, 0.4, 0.8}
    baselines = {(r[0], r[1]) for r in paired if r[2] == "baseline"}
    for key in (stage1, stage2, "ext-user_model_1"):
        assert {(key, "bag_of_codes"), (key, "image_blind_mode_fill"), (key, "chance")} <= (
            baselines
        )
    for r in paired:
        assert r[10] > 0 and (r[7] is None or r[7] <= r[8])
        assert r[9] is None or 0.0 <= r[9] <= 1.0
    markdown = (storage / "evaluation" / "leaderboard.md").read_text()
    assert markdown.startswith("### Paired comparisons")
    assert f"| {stage2} | {stage1} | findings | macro_auroc |" in markdown
    assert "### Feature layer (chosen on VALIDATE" in markdown
    for arm in (
        "ext-user_model_1",
        "stage1-",
        "stage2-",
        "baseline: bag_of_codes",
        "baseline: nearest_train_report_codes",
        "baseline: chance",
    ):
        assert arm in markdown
    con = duckdb.connect(str(storage / "catalog.duckdb"), read_only=True)
    assert (
        con.execute("SELECT count(DISTINCT checkpoint_id) FROM leaderboard").fetchall()[0][0] == 3
    )
    con.close()


def test_audit_walks_a_number_back_to_the_source_manifest(trained, evaluated):
    _, storage, _ = trained
    key = next(
        r.partition_key for r in evaluated[1].run_requests if r.partition_key.startswith("stage2")
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation.audit",
            str(storage / "catalog.duckdb"),
            "--checkpoint",
            key,
            "--task",
            "findings",
            "--metric",
            "macro_auroc",
            "--mask-ratio",
            "0.4",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in (
        "EVALUATION RUN",
        "config hash",
        "stage2_checkpoint",
        "stage1_checkpoint",
        "token_shards",
        "image_tokenizer",
        "text_tokenizer",
        "splits",
        "source_manifest",
        "files, unchanged since",
    ):
        assert needle in text, needle
    manifest = json.loads(
        (next((storage / "checkpoints" / "stage2").glob("step_*")) / "checkpoint.json").read_text()
    )
    assert manifest["content_hash"] in text and manifest["mlflow_run_id"] in text


def test_two_concurrent_evaluations_of_one_checkpoint_stay_consistent(trained, evaluated):
    _, storage, _ = trained
    key = evaluated[1].run_requests[0].partition_key
    before = results(storage, f"checkpoint_id = '{key}' AND task = 'retrieval'")
    script = (
        "import dagster as dg, sys\n"
        "from assets.evaluation import retrieval_eval\n"
        "from pipelines.partitions import checkpoints_partitions\n"
        "from pipelines.resources import MLflowResource, StorageResource\n"
        "inst = dg.DagsterInstance.ephemeral()\n"
        "inst.add_dynamic_partitions(checkpoints_partitions.name, [sys.argv[2]])\n"
        "r = dg.materialize([retrieval_eval], partition_key=sys.argv[2], instance=inst,\n"
        "    resources={'storage': StorageResource(root=sys.argv[1]),\n"
        "               'mlflow_tracking': MLflowResource()},\n"
        "    run_config={'ops': {'retrieval_eval': {'config': {'n_boot': 40}}}})\n"
        "sys.exit(0 if r.success else 1)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(storage), key],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert "lock" not in err.lower() or "Conflicting lock" not in err
    after = results(storage, f"checkpoint_id = '{key}' AND task = 'retrieval'")
    assert after == before  # same rows, no duplicates, none lost


def test_a_fresh_sensor_does_not_re_evaluate_evaluated_checkpoints(trained, evaluated):
    instance = evaluated[0]
    fresh = tick(instance, trained[2])
    requested = {r.partition_key for r in fresh.run_requests}
    assert not requested & {r.partition_key for r in evaluated[1].run_requests}
