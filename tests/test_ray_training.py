"""Ray Train integration: 2-worker CPU DDP fit and a failure drill (restart from checkpoint)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from cxr.storage import file_sha256
from cxr.token_shards import LABEL_COLUMNS, MANIFEST_NAME, token_schema
from models.vocabulary import Vocabulary

CODES_PER_IMAGE = 16
CODEBOOK = 32


def make_vocab() -> Vocabulary:
    return Vocabulary.build(
        text_vocab_size=300,
        codebook_size=CODEBOOK,
        specials={"<|endoftext|>": 0, "<|img|>": 1, "<|/img|>": 2},
    )


def write_token_shards(out_dir: Path, num_shards: int = 2, rows_per_shard: int = 24) -> list[Path]:
    """Tiny token shards with the real schema, 8-row row groups, and a manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries, paths = [], []
    for shard in range(num_shards):
        rows = []
        for i in range(rows_per_shard):
            n = shard * rows_per_shard + i
            rows.append(
                {
                    "image_id": f"img{n:04d}",
                    "study_id": f"s{n:04d}",
                    "patient_id": f"p{n % 7}",
                    "split": "val" if i % 6 == 0 else "train",
                    "view_position": "PA",
                    "is_frontal": True,
                    "image_codes": rng.integers(0, CODEBOOK, CODES_PER_IMAGE).tolist(),
                    "text_ids": rng.integers(3, 300, int(rng.integers(3, 10))).tolist(),
                    "text_source": "findings",
                    **dict.fromkeys(LABEL_COLUMNS),
                }
            )
        table = pa.Table.from_pylist(rows, schema=token_schema(CODES_PER_IMAGE))
        path = out_dir / f"shard-{shard:05d}.parquet"
        pq.write_table(table, path, row_group_size=8)
        paths.append(path)
        entries.append({"path": path.name, "num_rows": len(rows), "sha256": file_sha256(path)})
    manifest = {"shards": entries, "num_rows": sum(e["num_rows"] for e in entries)}
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    return paths


def loop_config(tokens_dir: Path, **extra) -> dict:
    return {
        "tokens_dir": str(tokens_dir),
        "vocab": dataclasses.asdict(make_vocab()),
        "lm_preset": "debug",
        "train": {
            "stage": 2,
            "steps": TOTAL_STEPS,
            "batch_size": 4,
            "lr": 1e-3,
            "warmup_steps": 1,
            "checkpoint_every": 2,
            "log_every": 2,
            "max_text_tokens": 8,
        },
        **extra,
    }


TOTAL_STEPS = 6


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from pipelines.on_ray.startup import ensure_ray

    started = ensure_ray("", num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory) -> Path:
    from models.lm_data import shard_paths_from_manifest

    out = tmp_path_factory.mktemp("lm_tokens") / "tokens"
    paths = write_token_shards(out)
    assert shard_paths_from_manifest(out, verify=True) == [p.resolve() for p in paths]
    return out


@pytest.fixture(scope="module")
def ddp_run(ray_session, tokens_dir, tmp_path_factory) -> dict:
    from pipelines.on_ray.lm_training import fit_with_ray

    storage = tmp_path_factory.mktemp("ray_fit")
    rows: list[dict] = []
    out = fit_with_ray(
        loop_config(tokens_dir), 2, False, str(storage), "fit", 0, on_progress=rows.append
    )
    return {**out, "progress_rows": rows}


def test_unknown_placement_strategy_is_rejected_before_ray_starts(tokens_dir, tmp_path):
    from pipelines.on_ray.lm_training import fit_with_ray

    with pytest.raises(ValueError, match="placement_strategy must be one of"):
        fit_with_ray(
            loop_config(tokens_dir), 2, False, str(tmp_path), "x", 0, placement_strategy="spread"
        )


def _optimizer_steps(checkpoint: Path) -> set[int]:
    state = torch.load(checkpoint / "training_state.pt", weights_only=False)
    return {int(s["step"]) for s in state["optimizer"]["state"].values()}


@pytest.mark.integration
def test_two_worker_ddp_fit_on_token_shards(ddp_run):
    from models.lm_train import COMPLETE_MARKER, latest_complete_checkpoint, load_lm_checkpoint

    assert ddp_run["steps"] == TOTAL_STEPS and ddp_run["start_step"] == 0
    assert ddp_run["worker_summary"]["world_size"] == 2
    import ray

    # one local node: both ranks report it (a cluster run shows distinct ids, test_ray_cluster)
    local_node = ray.get_runtime_context().get_node_id()
    assert ddp_run["worker_node_ids"] == [local_node, local_node]
    assert ddp_run["worker_summary"]["node_id"] == local_node
    checkpoint = Path(ddp_run["checkpoint_path"])
    assert checkpoint.name == f"step_{TOTAL_STEPS:06d}"
    assert (checkpoint / COMPLETE_MARKER).is_file()
    assert latest_complete_checkpoint(ddp_run["run_path"]) == checkpoint
    reported = sorted(p.name for p in Path(ddp_run["run_path"]).glob("step_*"))
    assert reported == ["step_000002", "step_000004", "step_000006"]
    assert ddp_run["metrics"]["step"] == TOTAL_STEPS
    assert np.isfinite(ddp_run["metrics"]["loss"]) and ddp_run["metrics"]["image_loss"] > 0
    assert _optimizer_steps(checkpoint) == {TOTAL_STEPS}
    meta = json.loads((checkpoint / "meta.json").read_text())
    assert meta["world_size"] == 2
    positions = meta["data_positions"]  # each rank read its own part of the shards
    assert len(positions) == 2 and positions[0]["rows_seen"] == positions[1]["rows_seen"] == 24
    model, info = load_lm_checkpoint(checkpoint)
    assert info["step"] == TOTAL_STEPS and info["vocab"] == make_vocab()
    assert model.config.vocab_size == make_vocab().size


@pytest.mark.integration
def test_rank_zero_progress_reaches_the_driver(ddp_run):
    rows = ddp_run["progress_rows"]  # rank 0's log rows, tailed from its progress file
    steps = [row["step"] for row in rows]
    assert steps == sorted(steps) and steps[-1] == TOTAL_STEPS
    assert all(row["total"] == TOTAL_STEPS and np.isfinite(row["loss"]) for row in rows)
    assert all(row["tokens_per_s"] > 0 for row in rows)


@pytest.mark.integration
def test_failure_drill_restarts_from_checkpoint_and_finishes(
    ray_session, tokens_dir, ddp_run, tmp_path
):
    from pipelines.on_ray.lm_training import fit_with_ray

    marker = tmp_path / "failure_fired"
    config = loop_config(tokens_dir, fault_injection={"rank": 1, "step": 3, "marker": str(marker)})
    out = fit_with_ray(config, 2, False, str(tmp_path / "ray"), "drill", max_failures=1)
    assert marker.exists()  # the failure fired (once)
    assert out["start_step"] == 2  # the second attempt resumed from the step-2 checkpoint
    assert out["steps"] == TOTAL_STEPS
    checkpoint = Path(out["checkpoint_path"])
    assert checkpoint.name == f"step_{TOTAL_STEPS:06d}"
    assert _optimizer_steps(checkpoint) == {TOTAL_STEPS}
    # data positions and RNG are restored per rank: the run ends where the clean one did
    clean = load_file(Path(ddp_run["checkpoint_path"]) / "model" / "model.safetensors")
    drilled = load_file(checkpoint / "model" / "model.safetensors")
    for name, tensor in clean.items():
        assert torch.allclose(tensor, drilled[name], rtol=0, atol=1e-6), name


@pytest.mark.integration
def test_sigkill_drill_resumes_from_the_last_complete_checkpoint(
    ray_session, tokens_dir, ddp_run, tmp_path
):
    """A worker process killed with SIGKILL mid-run (no Python cleanup at all) is replaced."""
    from models.lm_train import COMPLETE_MARKER
    from pipelines.on_ray.lm_training import fit_with_ray

    marker = tmp_path / "killed"
    fault = {"rank": 1, "step": 5, "marker": str(marker), "mode": "sigkill"}
    config = loop_config(tokens_dir, fault_injection=fault)
    out = fit_with_ray(config, 2, False, str(tmp_path / "ray"), "sigkill", max_failures=1)
    assert marker.read_text().startswith("rank 1")  # the kill happened, once
    # Ray registers a checkpoint only once every rank's report of that round has been polled;
    # a SIGKILL loses the killed rank's unpolled reports, so Ray may resume from an OLDER
    # complete checkpoint than the newest one on disk (step 4 here). Either way the resumed
    # state is a complete checkpoint and the run ends exactly where the clean run did.
    assert out["start_step"] in (0, 2, 4)
    assert (Path(out["run_path"]) / "step_000004" / COMPLETE_MARKER).is_file()
    assert out["steps"] == TOTAL_STEPS
    checkpoint = Path(out["checkpoint_path"])
    assert checkpoint.name == f"step_{TOTAL_STEPS:06d}" and (checkpoint / COMPLETE_MARKER).is_file()
    assert _optimizer_steps(checkpoint) == {TOTAL_STEPS}
    clean = load_file(Path(ddp_run["checkpoint_path"]) / "model" / "model.safetensors")
    drilled = load_file(checkpoint / "model" / "model.safetensors")
    for name, tensor in clean.items():
        assert torch.allclose(tensor, drilled[name], rtol=0, atol=1e-6), name
