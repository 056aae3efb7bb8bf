# ruff: noqa: T201  (a command-line script: it prints)
"""Start, inspect and stop a 2-node Ray cluster on this machine (separate processes).

A real multi-node Ray cluster for demos and the ``integration`` test, without touching anyone
else's Ray on the same machine:

- a head node (``ray start --head --block``) and ``--workers`` more nodes
  (``ray start --address=<head> --block``), each its own process session, each with its own CPU
  budget (``--num-cpus``), object store size and a custom resource ``chexmix_node_<i>: 1`` that
  tells them apart;
- every port is explicit and distinct (GCS, Ray client, dashboard, node manager, object
  manager, runtime-env agent, dashboard agent, metrics, worker port range), drawn as one free
  block per cluster; the dashboard UI is off. The cluster is addressed as ``127.0.0.1:<port>``,
  but note what Ray 2.60 itself does: ``ray start`` replaces a loopback ``--node-ip-address``
  by the host's primary address (``resolve_ip_for_localhost``: a multi-node cluster must be
  reachable from other hosts), so nodes advertise that address, and the GCS, raylets and
  workers listen on all interfaces. Hence token authentication (``RAY_AUTH_MODE=token``) on
  every node and driver: the token comes from ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``, or
  is generated once into ``<state-dir>/auth_token`` (mode 0600); a client without it is
  refused. On a shared or exposed host, also firewall the port block;
- each node has its own short ``--temp-dir`` (unix socket paths must stay under ~107 bytes);
- ``start`` waits until every node is alive in ``ray.nodes()`` (or stops what it started and
  fails with a clear error) and writes ``cluster.json`` into the state folder: the address, the
  ports, and the PID of each node's ``ray start`` process, which leads its own session;
- ``stop`` signals exactly the processes of those sessions (the ``ray start`` leaders, GCS,
  raylets, agents, Ray workers: found by session id and as descendants of the recorded PIDs),
  SIGTERM then SIGKILL, by PID. It never runs ``ray stop`` (which kills every Ray of the user).

Usage::

    python scripts/ray_cluster.py start --state-dir .ray_cluster  # prints RAY_ADDRESS=, ...
    export RAY_ADDRESS=$(python scripts/ray_cluster.py address --state-dir .ray_cluster)
    export RAY_AUTH_TOKEN_PATH=$PWD/.ray_cluster/auth_token  # then <your command>
    python scripts/ray_cluster.py status --state-dir .ray_cluster
    python scripts/ray_cluster.py stop --state-dir .ray_cluster
    python scripts/ray_cluster.py demo --state-dir .ray_cluster --steps 20  # make cluster-demo

``demo`` starts the cluster, materializes ``token_shards`` (2 actors) and ``stage1_checkpoint``
(2 workers, ``STRICT_SPREAD``) through Dagster with ``RAY_ADDRESS`` set, prints which node did
what, and stops the cluster in a ``finally`` (also on Ctrl-C / SIGTERM).

Importable too (the integration test does): ``start_cluster``, ``stop_cluster``,
``cluster_pids``, ``load_state``, ``is_gone``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from pipelines.on_ray.auth import TOKEN, TOKEN_PATH, cluster_auth_env
from pipelines.on_ray.startup import ensure_ray

STATE_NAME = "cluster.json"
LOOPBACK = "127.0.0.1"
WORKER_PORTS_PER_NODE = 64
# ports per node besides the worker range: node manager, object manager, runtime-env agent,
# dashboard agent gRPC, dashboard agent HTTP, metrics export (+ GCS and Ray client on the head)
PORTS_PER_NODE = 6
NODE_RESOURCE = "chexmix_node_{index}"
CLUSTER_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


class ClusterError(RuntimeError):
    """The cluster did not start, or its state file is missing or stale."""


@contextlib.contextmanager
def client_env(auth_env: dict[str, str]) -> Any:
    """Set the cluster's auth variables in this process for a driver's lifetime; restore them."""
    names = ("RAY_AUTH_MODE", TOKEN, TOKEN_PATH)
    before = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.pop(name, None)
    os.environ.update(auth_env)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def auth_env_of(state: dict[str, Any]) -> dict[str, str]:
    """The auth variables a driver of the recorded cluster needs (the token itself never is)."""
    if state.get("token_path"):
        return {"RAY_AUTH_MODE": "token", TOKEN_PATH: state["token_path"]}
    return {"RAY_AUTH_MODE": "token", TOKEN: os.environ.get(TOKEN, "")}


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # any interface too
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def allocate_ports(num_nodes: int, seed: int | None = None) -> list[dict[str, Any]]:
    """Pick one contiguous block of free ports per node (random base in 20000-59999).

    Args:
        num_nodes: Nodes, the head first.
        seed: Seed of the base-port draw (None: random).

    Returns:
        Per node: ``gcs``, ``client`` and ``dashboard`` (head only), ``node_manager``,
        ``object_manager``, ``runtime_env_agent``, ``dashboard_agent_grpc``,
        ``dashboard_agent_listen``, ``metrics_export``, ``min_worker``, ``max_worker``.

    Raises:
        ClusterError: No free block was found.
    """
    rng = random.Random(seed)
    block = 3 + num_nodes * (PORTS_PER_NODE + WORKER_PORTS_PER_NODE)
    for _ in range(200):
        base = rng.randrange(20000, 60000 - block)
        if not all(_port_free(p) for p in range(base, base + block)):
            continue
        nodes, port = [], base + 3
        for index in range(num_nodes):
            names = [
                "node_manager",
                "object_manager",
                "runtime_env_agent",
                "dashboard_agent_grpc",
                "dashboard_agent_listen",
                "metrics_export",
            ]
            ports: dict[str, Any] = {name: port + i for i, name in enumerate(names)}
            port += PORTS_PER_NODE
            ports["min_worker"], ports["max_worker"] = port, port + WORKER_PORTS_PER_NODE - 1
            port += WORKER_PORTS_PER_NODE
            if index == 0:
                ports["gcs"], ports["client"], ports["dashboard"] = base, base + 1, base + 2
            nodes.append(ports)
        return nodes
    raise ClusterError(f"no block of {block} free ports found on {LOOPBACK}")


def _ray_executable() -> str:
    candidate = Path(sys.executable).with_name("ray")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise ClusterError(f"the `ray` command is not installed next to {sys.executable}")
    return found


def _node_command(
    index: int,
    ports: dict[str, Any],
    head_address: str,
    num_cpus: int,
    temp_dir: Path,
    object_store_bytes: int,
) -> list[str]:
    command = [_ray_executable(), "start", "--block", "--disable-usage-stats"]
    if index == 0:
        command += [
            "--head",
            f"--port={ports['gcs']}",
            f"--ray-client-server-port={ports['client']}",
            "--include-dashboard=false",
            # Ray 2.60 still runs a headless dashboard process; keep it off the default 8265
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports['dashboard']}",
        ]
    else:
        command.append(f"--address={head_address}")
    command += [
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        f"--resources={json.dumps({NODE_RESOURCE.format(index=index): 1})}",
        f"--object-store-memory={object_store_bytes}",
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
        f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
        f"--metrics-export-port={ports['metrics_export']}",
        f"--min-worker-port={ports['min_worker']}",
        f"--max-worker-port={ports['max_worker']}",
        f"--temp-dir={temp_dir}",
        "--log-style=record",
        "--log-color=false",
    ]
    return command


def _leader_alive(node: dict[str, Any]) -> bool:
    """The recorded ``ray start`` process still runs (same PID AND same start time)."""
    try:
        proc = psutil.Process(node["pid"])
        return abs(proc.create_time() - node["create_time"]) < 1e-3 and not is_gone(proc)
    except psutil.NoSuchProcess:
        return False


def _node_pids(node: dict[str, Any]) -> set[int]:
    """The node's ``ray start`` leader, its descendants and every process in its session.

    The session id outlives the leader, so orphans of a dead leader are still found; only
    processes started after the leader count (a session id is a PID, and PIDs are reused).
    """
    pids: set[int] = set()
    if _leader_alive(node):
        with contextlib.suppress(psutil.NoSuchProcess):
            leader = psutil.Process(node["pid"])
            pids.add(leader.pid)
            pids.update(child.pid for child in leader.children(recursive=True))
    for proc in psutil.process_iter(["pid", "create_time"]):
        created = proc.info["create_time"] or 0.0
        if _safe_getsid(proc.pid) == node["pid"] and created >= node["create_time"] - 0.5:
            pids.add(proc.pid)
    return pids


def cluster_pids(state: dict[str, Any]) -> dict[int, str]:
    """Every live process of the cluster, PID -> process name.

    Args:
        state: The content of ``cluster.json`` (``load_state``).

    Returns:
        PID -> name for each node's ``ray start`` leader (when it is still the recorded
        process) and everything in its session: GCS, raylet, agents, Ray workers.
    """
    found: dict[int, str] = {}
    for node in state["nodes"]:
        for pid in _node_pids(node):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                if not is_gone(proc):
                    found[pid] = proc.name()
    return found


def _safe_getsid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError, OSError):
        return None


def is_gone(proc: psutil.Process) -> bool:
    """The process ended (a zombie waiting for its parent to reap it counts as ended)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if not is_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if not is_gone(p)]
    return alive


def _kill_pids(pids: list[int], grace_s: float) -> list[int]:
    """SIGTERM, wait ``grace_s``, SIGKILL survivors; return the PIDs still alive after that.

    ``psutil.Process`` checks the process start time before signalling, so a PID reused by
    another process in the meantime is never signalled.
    """
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    alive = _wait_gone(procs, grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return [p.pid for p in _wait_gone(alive, 5.0)]


def load_state(state_dir: str | Path) -> dict[str, Any]:
    """The ``cluster.json`` written by ``start_cluster``.

    Raises:
        ClusterError: There is none under ``state_dir``.
    """
    path = Path(state_dir) / STATE_NAME
    if not path.is_file():
        raise ClusterError(f"no {STATE_NAME} under {state_dir}: no cluster was started there")
    return json.loads(path.read_text())


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _check_leaders(leaders: list[dict[str, Any]]) -> None:
    for node in leaders:
        if not _leader_alive(node):
            raise ClusterError(
                f"`ray start` of node {node['index']} (pid {node['pid']}) exited; its log: "
                f"{node['log']}"
            )


def wait_for_gcs(address: str, leaders: list[dict[str, Any]], timeout_s: float) -> None:
    """Wait until the GCS port accepts TCP connections (a dead ``ray start`` fails fast).

    Raises:
        ClusterError: A ``ray start`` process exited, or the port stayed closed.
    """
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while not _port_open(host, int(port)):
        _check_leaders(leaders)
        if time.monotonic() > deadline:
            raise ClusterError(f"the Ray GCS at {address} did not open within {timeout_s:.0f} s")
        time.sleep(0.3)


def wait_for_nodes(
    address: str, expected: int, leaders: list[dict[str, Any]], timeout_s: float
) -> list[dict[str, Any]]:
    """Poll ``ray.nodes()`` until ``expected`` nodes with a ``chexmix_node_<i>`` are alive.

    Connects as a short-lived driver (only once the GCS port accepts connections, so
    ``ray.init`` does not sit in its own long retry loop) and disconnects before returning.

    Args:
        address: GCS address, ``host:port``.
        expected: Nodes that must be alive.
        leaders: The recorded ``ray start`` processes (a dead one fails fast).
        timeout_s: Seconds to wait in total.

    Returns:
        The alive nodes of this cluster, as ``ray.nodes()`` reports them.

    Raises:
        ClusterError: A ``ray start`` process exited, or the nodes were not all alive in time.
    """
    import ray

    deadline = time.monotonic() + timeout_s
    wait_for_gcs(address, leaders, timeout_s)
    ours: list[dict[str, Any]] = []
    if not ensure_ray(address, namespace="chexmix-cluster-probe"):
        raise ClusterError("this process is already connected to Ray; call ray.shutdown() first")
    try:
        while time.monotonic() < deadline:
            _check_leaders(leaders)
            ours = [
                n
                for n in ray.nodes()
                if n.get("Alive") and any(k.startswith("chexmix_node_") for k in n["Resources"])
            ]
            if len(ours) >= expected:
                return ours
            time.sleep(0.5)
    finally:
        ray.shutdown()
    raise ClusterError(
        f"expected {expected} alive Ray nodes at {address} within {timeout_s:.0f} s, found "
        f"{len(ours)}: {[n.get('NodeID') for n in ours]}; logs: {[n['log'] for n in leaders]}"
    )


def start_cluster(
    state_dir: str | Path,
    num_workers: int = 1,
    num_cpus: int | list[int] = 1,
    object_store_mb: int = 256,
    timeout_s: float = 120.0,
    seed: int | None = None,
) -> dict[str, Any]:
    """Start a head and ``num_workers`` worker nodes; wait until all are alive.

    Args:
        state_dir: Folder for ``cluster.json`` and the ``ray start`` logs (created).
        num_workers: Nodes besides the head.
        num_cpus: CPUs of each node (one int for all, or one per node, head first).
        object_store_mb: Object store size of each node, MiB.
        timeout_s: Seconds to wait for every node to be alive.
        seed: Seed of the port draw (None: random).

    Returns:
        The state (also in ``<state_dir>/cluster.json``): ``address``, ``temp_root``,
        ``nodes`` (``index``, ``role``, ``pid``, ``create_time``, ``ports``, ``num_cpus``,
        ``resource``, ``temp_dir``, ``log``, ``node_id``).

    Raises:
        ClusterError: A cluster is already recorded there and running, a node failed to start
            or not every node came up in time (what was started is stopped first).
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if (state_dir / STATE_NAME).exists():
        previous = load_state(state_dir)
        if cluster_pids(previous):
            raise ClusterError(
                f"a cluster recorded in {state_dir / STATE_NAME} is still running at "
                f"{previous['address']}; stop it first"
            )
        _remove_temp_root(previous)  # a dead cluster's leftovers
        (state_dir / STATE_NAME).unlink()
    num_nodes = 1 + num_workers
    cpus = [num_cpus] * num_nodes if isinstance(num_cpus, int) else list(num_cpus)
    if len(cpus) != num_nodes:
        raise ClusterError(f"num_cpus lists {len(cpus)} values for {num_nodes} nodes")
    ports = allocate_ports(num_nodes, seed)
    address = f"{LOOPBACK}:{ports[0]['gcs']}"
    # Ray's sockets live under <temp-dir>/session_<date>_<pid>/sockets/: keep the root short
    temp_root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    auth = cluster_auth_env(state_dir)  # token auth on every node: never an open cluster
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", TOKEN, TOKEN_PATH)}
    env.update({k: os.environ.get(k, v) for k, v in CLUSTER_ENV.items()})
    env.update(auth)
    state: dict[str, Any] = {
        "address": address,
        "temp_root": str(temp_root),
        "state_dir": str(state_dir),
        "started_at": time.time(),
        "auth_mode": "token",
        "token_path": auth.get(TOKEN_PATH),  # None: the token is in $RAY_AUTH_TOKEN
        "nodes": [],
    }
    try:
        for index in range(num_nodes):
            temp_dir = temp_root / str(index)
            temp_dir.mkdir()
            log = state_dir / f"node-{index}.log"
            command = _node_command(
                index, ports[index], address, cpus[index], temp_dir, object_store_mb << 20
            )
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its own session: stop finds its processes by it
                )
            state["nodes"].append(
                {
                    "index": index,
                    "role": "head" if index == 0 else "worker",
                    "pid": proc.pid,
                    "create_time": psutil.Process(proc.pid).create_time(),
                    "ports": ports[index],
                    "num_cpus": cpus[index],
                    "resource": NODE_RESOURCE.format(index=index),
                    "temp_dir": str(temp_dir),
                    "log": str(log),
                    "command": command,
                }
            )
            _write_state(state_dir, state)
            if index == 0:  # worker nodes join through the GCS
                wait_for_gcs(address, state["nodes"], timeout_s)
        with client_env(auth):
            nodes = wait_for_nodes(address, num_nodes, state["nodes"], timeout_s)
    except BaseException:
        stop_cluster(state_dir, quiet=True)
        raise
    by_resource = {
        key: n["NodeID"]
        for n in nodes
        for key in n.get("Resources", {})
        if key.startswith("chexmix_")
    }
    for node in state["nodes"]:
        node["node_id"] = by_resource.get(node["resource"])
    _write_state(state_dir, state)
    return state


def _remove_temp_root(state: dict[str, Any]) -> None:
    root = state.get("temp_root")
    if root and Path(root).name.startswith("rc") and Path(root).parent == Path("/tmp"):
        shutil.rmtree(root, ignore_errors=True)


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / f".{STATE_NAME}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_dir / STATE_NAME)


def stop_cluster(state_dir: str | Path, grace_s: float = 3.0, quiet: bool = False) -> list[int]:
    """Stop every process of the cluster recorded in ``state_dir``, by PID.

    Args:
        state_dir: The folder given to ``start_cluster``.
        grace_s: Seconds between SIGTERM and SIGKILL. Raylets and the GCS take ~10 s to drain
            on SIGTERM; nothing of this throwaway cluster outlives it, so the default is short.
        quiet: Do not fail when no state file exists.

    Returns:
        The PIDs that were signalled.

    Raises:
        ClusterError: No state file (unless ``quiet``), or processes survived SIGKILL.
    """
    try:
        state = load_state(state_dir)
    except ClusterError:
        if quiet:
            return []
        raise
    pids = cluster_pids(state)
    # all at once: waiting for each `ray start` leader's own graceful shutdown first is slower
    survivors = _kill_pids(sorted(pids), grace_s)
    late = sorted(set(cluster_pids(state)) - set(pids))  # spawned while the others stopped
    survivors += _kill_pids(late, grace_s=3.0)
    pids.update(dict.fromkeys(late, "late"))
    if survivors:
        raise ClusterError(f"processes survived SIGKILL: {survivors}")
    _remove_temp_root(state)
    (Path(state_dir) / STATE_NAME).unlink(missing_ok=True)
    return sorted(pids)


def cluster_status(state_dir: str | Path) -> dict[str, Any]:
    """Per node: recorded PID, whether its ``ray start`` still runs, and its processes."""
    state = load_state(state_dir)
    pids = cluster_pids(state)
    nodes = []
    for node in state["nodes"]:
        alive = _leader_alive(node)
        members = sorted(p for p in _node_pids(node) if p in pids)
        nodes.append(
            {
                "index": node["index"],
                "role": node["role"],
                "pid": node["pid"],
                "alive": alive,
                "node_id": node.get("node_id"),
                "num_cpus": node["num_cpus"],
                "processes": {p: pids.get(p, "?") for p in members},
            }
        )
    return {"address": state["address"], "nodes": nodes}


def _describe(node_id: str, state: dict[str, Any]) -> str:
    for node in state["nodes"]:
        if node.get("node_id") == node_id:
            return f"node {node['index']} ({node['role']}, pid {node['pid']})"
    return f"node {node_id[:12]} (not started by this script)"


def run_demo(
    state_dir: str | Path,
    num_nodes: int = 2,
    steps: int = 20,
    lm_preset: str = "small",
    placement_strategy: str = "STRICT_SPREAD",
) -> int:
    """Start the cluster, tokenize and train stage 1 on it through Dagster, print who did what.

    Uses the configured storage root (``$CHEXMIX_STORAGE_ROOT``, default ``storage``), whose
    ingest, curation and tokenizer assets must exist (``make demo``). The cluster is stopped by
    PID whatever happens (also on Ctrl-C and SIGTERM).

    Returns:
        0 on success.
    """
    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.instance import dagster_instance
    from pipelines.resources import StorageResource, default_resources

    storage = StorageResource().root_path
    needed = [storage / "tokenizers" / "vocabulary.json", storage / "images" / "_manifest.json"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise ClusterError(
            f"{missing} not found under the storage root {storage}: run `make demo` (or "
            "`make demo DEMO_SELECT='*vocabulary'`) first"
        )
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.perf_counter()
    state = start_cluster(state_dir, num_workers=num_nodes - 1, num_cpus=1)
    print(f"cluster up in {time.perf_counter() - started:.1f} s at {state['address']}:")
    for node in state["nodes"]:
        print(f"  node {node['index']} ({node['role']}): pid {node['pid']}, {node['node_id']}")
    driver_env = contextlib.ExitStack()
    try:
        driver_env.enter_context(client_env(auth_env_of(state)))  # this driver has the token
        os.environ["RAY_ADDRESS"] = state["address"]
        definitions = defs()
        wanted = {"token_shards", "stage1_checkpoint"}
        assets = [a for a in definitions.assets if {k.to_user_string() for k in a.keys} & wanted]
        checks = [
            c
            for c in definitions.asset_checks
            if next(iter(c.check_keys)).asset_key.to_user_string() in wanted
        ]
        stage1 = {
            "lm_preset": lm_preset,
            "steps": steps,
            "batch_size": 8,
            "warmup_steps": max(1, steps // 5),
            "checkpoint_every": steps,
            "num_workers": num_nodes,
            "placement_strategy": placement_strategy,
        }
        run_started = time.perf_counter()
        result = dg.materialize(
            [*assets, *checks],
            instance=dagster_instance(),
            resources=default_resources(),
            run_config={
                "ops": {
                    "token_shards": {"config": {"use_ray": True, "num_workers": num_nodes}},
                    "stage1_checkpoint": {"config": stage1},
                }
            },
        )
        wall = time.perf_counter() - run_started
        meta = {
            key: {k: v.value for k, v in events[0].metadata.items()}
            for key in wanted
            if (events := result.asset_materializations_for_node(key))
        }
        tokens, train = meta["token_shards"], meta["stage1_checkpoint"]
        print(
            f"\ntoken_shards + stage1_checkpoint materialized in {wall:.1f} s (run {result.run_id})"
        )
        print(
            f"tokenization: {tokens['num_shards']} shards ({tokens['num_shards_reused']} reused) "
            f"on {tokens['num_nodes']} nodes"
        )
        for node_id, count in sorted(tokens["shards_per_node"].items()):
            print(f"  {_describe(node_id, state)}: {count} shard(s)")
        print(
            f"stage 1: {train['steps']} steps, {placement_strategy}, "
            f"loss {train['first_loss']:.3f} -> {train['final_loss']:.3f}"
        )
        for rank, node_id in enumerate(train["worker_node_ids"]):
            print(f"  rank {rank}: {_describe(node_id, state)}")
        for check in result.get_asset_check_evaluations():
            print(f"  check {check.check_name}: {'passed' if check.passed else 'FAILED'}")
        return 0
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        import ray

        ray.shutdown()  # disconnect the driver before its cluster goes away
        driver_env.close()
        stopped = stop_cluster(state_dir)
        print(f"cluster stopped: {len(stopped)} processes signalled by PID")
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``start`` / ``stop`` / ``status`` / ``address`` / ``demo``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "stop", "status", "address", "demo"):
        cmd = sub.add_parser(name)
        cmd.add_argument(
            "--state-dir", default=".ray_cluster", help="where cluster.json and the logs go"
        )
        if name == "start":
            cmd.add_argument("--workers", type=int, default=1, help="nodes besides the head")
            cmd.add_argument(
                "--num-cpus", type=int, nargs="+", default=[1], help="CPUs per node (1 or N)"
            )
            cmd.add_argument("--object-store-mb", type=int, default=256)
            cmd.add_argument("--timeout", type=float, default=120.0)
        if name == "stop":
            cmd.add_argument("--grace", type=float, default=3.0, help="SIGTERM -> SIGKILL, s")
        if name == "demo":
            cmd.add_argument("--nodes", type=int, default=2, help="nodes, 1 CPU each")
            cmd.add_argument("--steps", type=int, default=20, help="stage-1 optimizer steps")
            cmd.add_argument("--lm-preset", default="small")
            cmd.add_argument("--placement-strategy", default="STRICT_SPREAD")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            cpus = args.num_cpus[0] if len(args.num_cpus) == 1 else args.num_cpus
            state = start_cluster(
                args.state_dir, args.workers, cpus, args.object_store_mb, args.timeout
            )
            for node in state["nodes"]:
                print(
                    f"node {node['index']} ({node['role']}): pid {node['pid']}, "
                    f"{node['num_cpus']} CPU, node_id {node['node_id']}",
                    file=sys.stderr,
                )
            print(f"RAY_ADDRESS={state['address']}")
            if state.get("token_path"):
                print(f"{TOKEN_PATH}={state['token_path']}")
        elif args.command == "address":
            print(load_state(args.state_dir)["address"])
        elif args.command == "status":
            print(json.dumps(cluster_status(args.state_dir), indent=2))
        elif args.command == "demo":
            return run_demo(
                args.state_dir, args.nodes, args.steps, args.lm_preset, args.placement_strategy
            )
        else:
            stopped = stop_cluster(args.state_dir, grace_s=args.grace)
            print(f"stopped {len(stopped)} processes: {stopped}")
    except ClusterError as error:
        print(f"ray_cluster {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
