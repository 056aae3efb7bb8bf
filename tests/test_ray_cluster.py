"""A real 2-node Ray cluster: two `ray start` processes on this machine (1 CPU each), started
and stopped by `scripts/ray_cluster.py`, with the pipeline pointed at it through RAY_ADDRESS.

Tokenization (2 Ray Data actors) and stage 1 (2 Ray Train workers, STRICT_SPREAD) must run on
both nodes; teardown stops every process of the cluster by PID and checks that none is left.
The cluster runs with token authentication: a driver without the token is refused."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psutil
import pytest
from pipeline_setup import local_resources

from cxr.synthetic import generate_archive
from pipelines.definitions import defs
from pipelines.resources import (
    RayResource,
)

SCRIPT_TIMEOUT_S = 600

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "ray_cluster.py"
UPSTREAM = [
    "source_manifest",
    "studies",
    "cxr_images",
    "report_sections",
    "finding_labels",
    "splits",
    "text_tokenizer",
    "image_tokenizer",
    "vocabulary",
]


def _load_script():
    spec = importlib.util.spec_from_file_location("ray_cluster_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resources(archive: Path, storage: Path) -> dict:
    return local_resources(archive, storage, "cluster-test-salt-0123456789", RayResource())


def _assets(names) -> list:
    # by any of its keys: cxr_images is a multi-asset (it also materializes ingest_quarantine)
    return [a for a in defs().assets if {k.to_user_string() for k in a.keys} & set(names)]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> tuple[Path, Path]:
    """Ingest -> vocabulary in-process (no Ray): the inputs of tokenization."""
    archive = tmp_path_factory.mktemp("cluster_archive")
    generate_archive(archive, num_studies=12, seed=3, bad_files=False, size_scale=0.5)
    storage = tmp_path_factory.mktemp("cluster_storage")
    result = dg.materialize(
        _assets(UPSTREAM),
        resources=_resources(archive, storage),
        run_config={
            "ops": {
                "cxr_images": {
                    "config": {"use_ray": False, "images_per_shard": 8, "image_size": 64}
                },
                "image_tokenizer": {
                    "config": {"preset": "debug", "steps": 4, "batch_size": 4, "real_check_dir": ""}
                },
                "text_tokenizer": {"config": {"vocab_size": 320, "min_frequency": 1}},
            }
        },
    )
    assert result.success
    manifest = json.loads((storage / "images" / "_manifest.json").read_text())
    assert sum(1 for s in manifest["shards"] if s["num_images"]) >= 2  # work for both nodes
    return archive, storage


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes started by the script's CLI; stopped by PID, and checked gone."""
    import ray

    ray.shutdown()  # a Ray left connected by an earlier test would swallow RAY_ADDRESS
    script = _load_script()
    state_dir = tmp_path_factory.mktemp("ray_cluster")
    started = subprocess.run(
        [sys.executable, str(SCRIPT), "start", "--state-dir", str(state_dir), "--timeout", "120"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    state = script.load_state(state_dir) if (state_dir / script.STATE_NAME).exists() else None
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert started.stdout.splitlines() == [
            f"RAY_ADDRESS={state['address']}",
            f"RAY_AUTH_TOKEN_PATH={state_dir / 'auth_token'}",
        ]
        assert state["auth_mode"] == "token"
        assert (state_dir / "auth_token").stat().st_mode & 0o777 == 0o600
        node_ids = [n["node_id"] for n in state["nodes"]]
        assert len(set(node_ids)) == 2 and all(node_ids)
        pids = script.cluster_pids(state)
        assert {n["pid"] for n in state["nodes"]} <= set(pids)
        assert {"gcs_server", "raylet"} <= set(pids.values())
        yield state
    finally:
        ray.shutdown()
        pids = script.cluster_pids(state) if state else {}
        stopped = subprocess.run(
            [sys.executable, str(SCRIPT), "stop", "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert stopped.returncode == 0 or not state, stopped.stderr[-3000:]
        alive = []
        for pid in pids:
            try:
                if not script.is_gone(psutil.Process(pid)):
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        assert not alive, f"cluster processes still running after stop: {alive}"
        if state:
            assert not script.cluster_pids(state)
            assert not Path(state["temp_root"]).exists()


def test_ports_are_distinct_free_blocks_and_commands_name_them(tmp_path):
    script = _load_script()
    nodes = script.allocate_ports(2, seed=1)
    ports = [p for node in nodes for k, p in node.items() if not k.endswith("_worker")]
    ranges = [set(range(n["min_worker"], n["max_worker"] + 1)) for n in nodes]
    assert len(ports) == len(set(ports)) == 2 * script.PORTS_PER_NODE + 3
    assert not ranges[0] & ranges[1] and not set(ports) & (ranges[0] | ranges[1])
    head = script._node_command(0, nodes[0], "127.0.0.1:1", 1, tmp_path, 1 << 28)
    worker = script._node_command(1, nodes[1], "127.0.0.1:1", 2, tmp_path, 1 << 28)
    assert "--head" in head and "--include-dashboard=false" in head and "--block" in head
    assert f"--port={nodes[0]['gcs']}" in head and "--address=127.0.0.1:1" in worker
    assert "--num-cpus=2" in worker and '--resources={"chexmix_node_1": 1}' in worker
    assert f"--min-worker-port={nodes[1]['min_worker']}" in worker


def test_stop_without_a_recorded_cluster_is_a_clear_error(tmp_path):
    script = _load_script()
    with pytest.raises(script.ClusterError, match="no cluster was started there"):
        script.stop_cluster(tmp_path)
    assert script.stop_cluster(tmp_path, quiet=True) == []
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "stop", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "no cluster.json" in done.stderr


@pytest.fixture()
def cluster_driver(cluster, monkeypatch):
    """This process as a driver of the cluster (its token); afterwards as it was before.

    Ray caches the auth mode per process: later tests start local Rays with the suite's
    ``RAY_AUTH_MODE=disabled``, so the cache is refreshed once the variables are restored.
    """
    from pipelines.on_ray.auth import _refresh_ray_config

    monkeypatch.setenv("RAY_ADDRESS", cluster["address"])
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", cluster["token_path"])
    yield cluster
    monkeypatch.undo()
    _refresh_ray_config()


@pytest.mark.integration
@pytest.mark.timeout(SCRIPT_TIMEOUT_S)
def test_tokenization_and_training_run_on_both_nodes(upstream, cluster_driver):
    import ray

    archive, storage = upstream
    cluster = cluster_driver
    ray.shutdown()
    cluster_nodes = {n["node_id"] for n in cluster["nodes"]}
    stage1 = {
        "lm_preset": "debug",
        "steps": 4,
        "batch_size": 4,
        "warmup_steps": 1,
        "checkpoint_every": 4,
        "max_text_tokens": 32,
        "val_max_rows": 16,
        "num_workers": 2,
        "placement_strategy": "STRICT_SPREAD",
    }
    try:
        result = dg.materialize(
            _assets(["token_shards", "stage1_checkpoint"]),
            resources=_resources(archive, storage),
            run_config={
                "ops": {
                    "token_shards": {"config": {"use_ray": True, "num_workers": 2}},
                    "stage1_checkpoint": {"config": stage1},
                }
            },
        )
        assert result.success
        # the driver really was a client of the 2-node cluster, not a local Ray
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert alive == cluster_nodes
    finally:
        ray.shutdown()

    def metadata(asset: str) -> dict:
        (event,) = result.asset_materializations_for_node(asset)
        return {k: v.value for k, v in event.metadata.items()}

    tokens = metadata("token_shards")
    assert tokens["num_nodes"] == 2
    assert set(tokens["shards_per_node"]) == cluster_nodes  # each node tokenized shards
    assert sum(tokens["shards_per_node"].values()) == tokens["num_shards"]
    train = metadata("stage1_checkpoint")
    assert train["world_size"] == 2 and train["steps"] == 4
    workers = train["worker_node_ids"]
    assert len(workers) == 2 and set(workers) == cluster_nodes  # STRICT_SPREAD: 1 per node


PROBE = """
import logging, sys, time
import ray
started = time.monotonic()
try:
    ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.ERROR)
    print("CONNECTED", sorted(ray.cluster_resources()))
except Exception as error:  # what a refused driver sees
    print("REFUSED", type(error).__name__, error)
print(f"after {time.monotonic() - started:.1f} s")
"""


def _probe(address: str, home: Path, **auth: str) -> str:
    """A fresh driver process joining ``address`` (loopback) with only ``auth`` set.

    Bounded: Ray gives up after ~20 s of refused attempts; the process is killed at 120 s.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(auth, HOME=str(home), RAY_USAGE_STATS_ENABLED="0")  # no ~/.ray/auth_token
    done = subprocess.run(
        [sys.executable, "-c", PROBE, address], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr  # Ray logs the GCS's reason for refusing on stderr


@pytest.mark.integration
@pytest.mark.timeout(SCRIPT_TIMEOUT_S)
def test_a_driver_without_the_token_is_refused(cluster, tmp_path):
    address = cluster["address"]
    assert address.startswith("127.0.0.1:")  # the probes stay on loopback
    no_token = _probe(address, tmp_path, RAY_AUTH_MODE="disabled")
    assert no_token.startswith("REFUSED") and "InvalidAuthToken" in no_token, no_token
    wrong = _probe(address, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    assert wrong.startswith("REFUSED") and "InvalidAuthToken" in wrong, wrong
    # the same driver with the cluster's token file gets in (so the refusals are about the token)
    allowed = _probe(
        address, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=cluster["token_path"]
    )
    assert allowed.startswith("CONNECTED") and "chexmix_node_0" in allowed, allowed
