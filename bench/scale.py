"""Scale benchmark: the data path at 1x, 5x and 20x a base size; time and peak memory per asset.

Usage::

    python bench/scale.py [--base 400] [--factors 1,5,20] [--work-dir DIR] [--keep]

For each factor it generates the embedded synthetic archive (``python -m cxr.synthetic OUT
--studies base*factor --seed S``, bad files included) and materializes, in a FRESH storage root
and DAGSTER_HOME, as a separate process (``dagster asset materialize -m pipelines.definitions``),
the data assets::

    source_manifest studies cxr_images ingest_quarantine report_sections finding_labels splits
    text_tokenizer image_tokenizer vocabulary token_shards

(not training, not evaluation; ``cxr_images`` and ``ingest_quarantine`` are one step), with the
asset checks the CLI runs along with them. Settings are
the defaults (Ray ON for ``cxr_images`` and ``token_shards``: a local Ray started by each step)
except: the multiprocess executor runs one step at a time (``max_concurrent: 1``, so every step
is measured alone), the image tokenizer uses the ``debug`` preset for ``--vq-steps`` steps (the
benchmark measures the data path, not VQ training), and the decode-rate floor is
``--min-success-rate`` (a small archive carries a fixed set of broken files).

While the run goes, a thread samples the process tree every ``--interval`` s (the CLI, each
step's subprocess and, through it, Ray's gcs_server, raylet and workers): RSS summed over the
processes (and PSS, shared pages counted once) and CPU seconds. Step windows come from the
run's event log (a step's window: its subprocess launch to the next step's launch), which gives
per asset: step wall, images/s, CPU seconds, images per CPU second (= per core) and peak RSS.

Targets (the issue "bounded memory at 20x data"): steady-state throughput flat within 20% from
1x to 20x (marginal images/s between consecutive sizes, so fixed costs cancel, must not drop by
more than 20%; judged on the data-path steps, wall and CPU, and shown for the whole run), and
peak RSS at the largest size <= 1.2 x peak at the smallest + ``--rss-slack-mb`` (whole tree,
and per step). ``--from-json`` re-analyses a saved result. Then a projection to MIMIC-CXR size
(377,000 images) on one 16-core node and on N Ray nodes, from the per-core images/s of each
stage, with the assumptions printed.

Writes ``<out>/scale-<date>.json`` (``scale-base<N>-<date>.json`` when ``--base`` is not the
default) with machine info, load averages, args, the per-size and per-step measurements, the
checks against the targets and the projection.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/tokenize.py shadows the stdlib module when bench/ is first on sys.path: move it last.
sys.path.sort(key=lambda p: Path(p or ".").resolve() == Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

import psutil

from bench.common import (
    DATA_ASSETS,
    DATA_STEPS,
    ProcessTreeSampler,
    load_average,
    machine_info,
    relative_args,
    repo_relative,
    scrub_paths,
)

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["dagster", "ray", "duckdb", "pyarrow", "polars", "pydicom", "torch", "tokenizers"]
PACKAGES.append("psutil")
MB = 1024 * 1024
#: How each stage can spread over cores when projecting: "ray" = every core of every node
#: (Ray Data tasks / actors), "node" = the cores of the one node the step runs on (threads in
#: DuckDB / Rust / torch), an int = at most that many cores (a thread pool, a Python loop).
STAGE_PARALLELISM: dict[str, str | int] = {
    "source_manifest": 4,  # ThreadPoolExecutor(num_threads=4): sha256 + header reads
    "studies": 1,  # DuckDB join + per-row Python batches
    # Ray Data map, one task per image shard, num_cpus=1; then, in the same step, the
    # ingest_quarantine table (DuckDB COPY)
    "cxr_images": "ray",
    "report_sections": 1,  # Python section parser, one process
    "finding_labels": 1,  # Python rule labeler, one process
    "splits": 1,  # DuckDB group-by + Python hash per study
    "text_tokenizer": "node",  # tokenizers BPE trainer (Rust threads)
    "image_tokenizer": "node",  # fixed VQ steps (torch threads) + DuckDB reads
    "vocabulary": 1,
    "token_shards": "ray",  # Ray Data actors (num_workers set to the cluster's cores)
}
CHECK_PARALLELISM: str | int = "node"  # asset checks: DuckDB queries
#: Steps whose work grows with the data (image_tokenizer: fixed VQ steps; vocabulary: constant).
DATA_PATH = [s for s in DATA_STEPS if s not in ("image_tokenizer", "vocabulary")]


# ----------------------------------------------------------------------------------------------
# Inputs


def generate(out: Path, studies: int, seed: int, interval: float) -> dict[str, Any]:
    """Generate the synthetic archive (or reuse one made with the same arguments)."""
    marker = out / ".scale-bench.json"  # hidden: the source walk skips dot files
    wanted = {"studies": studies, "seed": seed, "bad_files": True}
    _wait_for_other_generator(out, marker)
    if marker.exists() and json.loads(marker.read_text()).get("args") == wanted:
        info = json.loads(marker.read_text())
        info["reused"] = True
        return info
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "cxr.synthetic", str(out), "--studies", str(studies)]
    cmd += ["--seed", str(seed)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with ProcessTreeSampler(proc.pid, interval=max(interval, 0.5), pss=False) as sampler:
        output, _ = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output.decode()}")
    files = [p for p in (out / "files").rglob("*") if p.is_file()]
    info = {
        "args": wanted,
        "command": scrub_paths(" ".join(cmd[1:])),
        "seconds": seconds,
        "summary": scrub_paths(output.decode().strip().splitlines()[-1]),
        "num_files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "peak_rss_mb": sampler.peak_rss / MB,
    }
    marker.write_text(json.dumps(info, indent=2))
    info["reused"] = False
    return info


def _wait_for_other_generator(out: Path, marker: Path, poll_s: float = 10.0) -> None:
    """Wait while another process generates ``out`` (archives can be made ahead of a run)."""

    def busy() -> bool:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["pid"] != os.getpid() and "cxr.synthetic" in cmd and str(out) in cmd:
                return True
        return False

    if not busy():
        return
    print(f"   waiting for another process generating {out} ...", flush=True)
    while busy():
        time.sleep(poll_s)
    deadline = time.time() + 300  # its wrapper writes the marker after the generator exits
    while not marker.exists() and time.time() < deadline:
        time.sleep(poll_s)


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """Run config of the benchmark (defaults everywhere else)."""
    return {
        "execution": {"config": {"multiprocess": {"max_concurrent": 1}}},
        "ops": {
            "cxr_images": {"config": {"use_ray": args.ray, "image_size": args.image_size}},
            "cxr_images_decode_success_rate": {
                "config": {"min_success_rate": args.min_success_rate}
            },
            "image_tokenizer": {
                "config": {
                    "preset": "debug",
                    "steps": args.vq_steps,
                    "batch_size": 8,
                    "real_check_images": 8,
                    "max_val_images": args.vq_val_images,
                }
            },
            "token_shards": {"config": {"use_ray": args.ray}},
        },
    }


def pipeline_env(source: Path, storage: Path, dagster_home: Path) -> dict[str, str]:
    """The Makefile's environment, pointed at this size's archive, storage and DAGSTER_HOME."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a local Ray per step, as in `make demo`
    env.update(
        {
            "DAGSTER_HOME": str(dagster_home),
            "CHEXMIX_SOURCE_ROOT": str(source),
            "CHEXMIX_SOURCE_LAYOUT": "mimic-cxr",
            "CHEXMIX_STORAGE_ROOT": str(storage),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# ----------------------------------------------------------------------------------------------
# One size


def read_steps(dagster_home: Path) -> tuple[str, str, list[dict[str, Any]]]:
    """Run id, status and per-step event times of the (only) run in ``dagster_home``."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        runs = instance.get_runs(limit=1)
        if not runs:
            return "", "MISSING", []
        run = runs[0]
        steps: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None or not entry.step_key:
                continue
            kind = event.event_type_value
            if entry.step_key not in steps:
                steps[entry.step_key] = {"step": entry.step_key}
                order.append(entry.step_key)
            step = steps[entry.step_key]
            name = {
                "STEP_WORKER_STARTING": "launch",
                "STEP_START": "start",
                "STEP_SUCCESS": "end",
                "STEP_FAILURE": "end",
            }.get(kind)
            if name and name not in step:
                step[name] = entry.timestamp
            if kind in ("STEP_SUCCESS", "STEP_FAILURE"):
                step["status"] = "success" if kind == "STEP_SUCCESS" else "failure"
        # planned-materialization events come first, in name order: sort by launch time
        ran = [steps[k] for k in order if "launch" in steps[k] or "start" in steps[k]]
        ran.sort(key=lambda s: s.get("launch", s.get("start", 0.0)))
        return run.run_id, str(run.status.value), ran
    finally:
        instance.dispose()


def dataset_counts(storage: Path) -> dict[str, Any]:
    """Counts and mean source image size of what the run produced."""
    import duckdb
    import pyarrow.parquet as pq

    counts: dict[str, Any] = {}
    manifest = storage / "images" / "_manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        counts["images"] = data["num_images"]
        counts["images_rejected"] = data["num_rejected"]
        counts["image_shards"] = len(data["shards"])
        glob = storage / "images" / "shard-[0-9][0-9][0-9][0-9][0-9].parquet"
        row = duckdb.sql(
            f"""SELECT avg(original_rows * original_cols) / 1e6 FROM read_parquet('{glob}')"""
        ).fetchall()[0]
        counts["mean_source_megapixels"] = row[0]
    for key, rel in (
        ("files", "source/manifest.parquet"),
        ("studies", "studies/studies.parquet"),
        ("study_images", "studies/study_images.parquet"),
    ):
        if (storage / rel).exists():
            counts[key] = pq.read_metadata(storage / rel).num_rows
    if (storage / "source/manifest.parquet").exists():
        counts["source_bytes"] = duckdb.sql(
            f"SELECT sum(size_bytes) FROM read_parquet('{storage / 'source/manifest.parquet'}')"
        ).fetchall()[0][0]
    tokens = storage / "tokens" / "_manifest.json"
    if tokens.exists():
        counts["token_rows"] = json.loads(tokens.read_text())["num_rows"]
    return counts


def run_size(args: argparse.Namespace, factor: int, work: Path) -> dict[str, Any]:
    """Generate, materialize and measure one size."""
    studies = args.base * factor
    source = work / f"source-{studies}"
    storage = work / f"storage-{studies}"
    dagster_home = work / f"dagster-home-{studies}"
    log_path = work / f"run-{studies}.log"
    print(f"\n== {factor}x: {studies} studies", flush=True)
    gen = generate(source, studies, args.seed, args.interval)
    made = "reused" if gen["reused"] else f"made in {gen['seconds']:.0f} s"
    print(f"   archive: {gen['summary'][:100]}... {gen['bytes'] / 1e6:.0f} MB, {made}", flush=True)
    for path in (storage, dagster_home):
        shutil.rmtree(path, ignore_errors=True)
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    cmd = [
        str(Path(sys.executable).with_name("dagster")),
        "asset",
        "materialize",
        "-m",
        "pipelines.definitions",
        "--select",
        ",".join(DATA_ASSETS),
        "--config-json",
        json.dumps(run_config(args)),
    ]
    load_before = load_average()
    with log_path.open("wb") as log:
        wall_start = time.time()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=pipeline_env(source, storage, dagster_home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with ProcessTreeSampler(proc.pid, interval=args.interval, pss=args.pss) as sampler:
                returncode = proc.wait()
        except BaseException:  # Ctrl-C / kill: take the run's whole session down with us
            os.killpg(proc.pid, 15)
            raise
        wall_end = time.time()
    # Ray daemons outliving their step would be missed after the CLI exits: report leftovers.
    leftovers = [p.pid for p in psutil.process_iter() if _in_session(p, proc.pid)]
    run_id, status, steps = read_steps(dagster_home)
    counts = dataset_counts(storage)
    images = counts.get("images", 0)
    step_rows = []
    for index, step in enumerate(steps):
        begin = step.get("launch", step.get("start", wall_start))
        following = steps[index + 1] if index + 1 < len(steps) else None
        until = following.get("launch", following.get("start")) if following else wall_end
        window = sampler.window(begin, until)
        step_s = step.get("end", until) - step.get("start", begin)
        step_rows.append(
            {
                "step": step["step"],
                "kind": "asset" if step["step"] in DATA_STEPS else "check",
                "status": step.get("status", "unknown"),
                "step_s": step_s,
                "process_s": until - begin,
                "images_per_s": images / step_s if step_s > 0 else None,
                "cpu_s": window["cpu_s"],
                "images_per_cpu_s": images / window["cpu_s"] if window["cpu_s"] > 0 else None,
                "peak_rss_mb": window["peak_rss_bytes"] / MB,
                "peak_pss_mb": window["peak_pss_bytes"] / MB,
                "max_procs": window["max_procs"],
                "peak_breakdown_mb": window["peak_breakdown_mb"],
                "samples": window["samples"],
            }
        )
    first_launch = min((s.get("launch", wall_end) for s in steps), default=wall_end)
    startup = sampler.window(wall_start, first_launch)
    wall = wall_end - wall_start
    result = {
        "factor": factor,
        "studies_requested": studies,
        "generate": gen,
        "run_id": run_id,
        "status": status,
        "returncode": returncode,
        "log": repo_relative(log_path),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "counts": counts,
        "wall_s": wall,
        "images_per_s": images / wall if wall else None,
        "cpu_s": sampler.samples[-1].cpu_s if sampler.samples else 0.0,
        "peak_rss_mb": sampler.peak_rss / MB,
        "peak_pss_mb": sampler.peak_pss / MB,
        "peak_breakdown_mb": {k: round(v / MB, 1) for k, v in sampler.peak_breakdown.items()},
        "cli_startup": {"seconds": first_launch - wall_start, **startup},
        "steps": step_rows,
        "leftover_pids": leftovers,
        "timeline": [
            [round(s.t - wall_start, 2), round(s.rss / MB, 1), round(s.pss / MB, 1)]
            for s in sampler.samples[:: max(1, len(sampler.samples) // 2000)]
        ],
    }
    print(
        f"   run {status} (rc {returncode}) in {wall:.0f} s: {images} images, "
        f"{result['images_per_s']:.2f} images/s, peak RSS {result['peak_rss_mb']:.0f} MB"
        + (f", PSS {result['peak_pss_mb']:.0f} MB" if args.pss else "")
        + f"; load {load_before[0]:.1f} -> {result['load_average_after'][0]:.1f}",
        flush=True,
    )
    if returncode:
        print(f"   FAILED: see {log_path}", flush=True)
    if not args.keep:
        for path in (storage, source, dagster_home):
            shutil.rmtree(path, ignore_errors=True)
    return result


def _in_session(proc: psutil.Process, session_pid: int) -> bool:
    try:
        return os.getsid(proc.pid) == session_pid
    except (OSError, psutil.Error):
        return False


# ----------------------------------------------------------------------------------------------
# Analysis


def data_path_seconds(size: dict[str, Any], field: str) -> float:
    """Sum of ``field`` (step_s / cpu_s) over the steps whose work grows with the data.

    Leaves out image_tokenizer (a fixed number of VQ steps) and vocabulary (constant), and
    the asset checks.
    """
    return sum(s[field] for s in size["steps"] if s["step"] in DATA_PATH)


def marginal(sizes: list[dict[str, Any]], key: str = "wall_s") -> list[dict[str, Any]]:
    """Images per second of the extra images between consecutive sizes (fixed costs cancel).

    ``key``: a per-size field (``wall_s``, ``cpu_s``) or ``data_path_step_s`` /
    ``data_path_cpu_s`` (see ``data_path_seconds``). ``images_per_s`` is None when the larger
    size took no longer (timing noise on a shared machine).
    """

    def seconds_of(size: dict[str, Any]) -> float:
        if key.startswith("data_path_"):
            return data_path_seconds(size, key.removeprefix("data_path_"))
        return size[key]

    rows = []
    ok = [s for s in sizes if s["returncode"] == 0 and s["counts"].get("images")]
    for small, large in itertools.pairwise(ok):
        extra = large["counts"]["images"] - small["counts"]["images"]
        seconds = seconds_of(large) - seconds_of(small)
        rows.append(
            {
                "from_factor": small["factor"],
                "to_factor": large["factor"],
                "extra_images": extra,
                "extra_s": seconds,
                "images_per_s": extra / seconds if seconds > 0 else None,
            }
        )
    return rows


def no_drop(rates: list[float | None]) -> bool | None:
    """True when every marginal rate is >= 0.8 x the one before; None when one is unusable."""
    if len(rates) < 2 or any(r is None for r in rates):
        return None
    return all(b >= 0.8 * a for a, b in itertools.pairwise(rates))  # type: ignore[operator]


def targets(sizes: list[dict[str, Any]], slack_mb: float) -> dict[str, Any]:
    """Throughput and peak-memory flatness from the smallest to the largest size.

    Throughput is "flat" when no marginal rate drops by more than 20% from one size to the
    next (a rise is fixed costs amortised, or a quieter machine); it is judged on the
    data-path steps (step wall and CPU), and reported for the whole run too.
    """
    ok = [s for s in sizes if s["returncode"] == 0]
    if len(ok) < 2:
        return {"evaluated": False, "reason": "fewer than two successful sizes"}
    first, last = ok[0], ok[-1]
    rates = {
        key: [m["images_per_s"] for m in marginal(ok, key=key)]
        for key in ("wall_s", "cpu_s", "data_path_step_s", "data_path_cpu_s")
    }
    limit = 1.2 * first["peak_rss_mb"] + slack_mb
    per_step = []
    first_steps = {s["step"]: s for s in first["steps"]}
    for step in last["steps"]:
        base = first_steps.get(step["step"])
        if base is None:
            continue
        step_limit = 1.2 * base["peak_rss_mb"] + slack_mb
        per_step.append(
            {
                "step": step["step"],
                "peak_rss_mb_first": base["peak_rss_mb"],
                "peak_rss_mb_last": step["peak_rss_mb"],
                "growth_mb": step["peak_rss_mb"] - base["peak_rss_mb"],
                "within_target": step["peak_rss_mb"] <= step_limit,
            }
        )
    return {
        "evaluated": True,
        "sizes": [first["factor"], last["factor"]],
        "marginal_images_per_s": rates,
        "throughput_no_drop_over_20pct": {key: no_drop(r) for key, r in rates.items()},
        "peak_rss_mb": [first["peak_rss_mb"], last["peak_rss_mb"]],
        "peak_rss_limit_mb": limit,
        "rss_slack_mb": slack_mb,
        "peak_rss_flat": last["peak_rss_mb"] <= limit,
        "per_step": per_step,
    }


def stage_costs(sizes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per step: marginal CPU-s per image and fixed wall, from the two largest sizes."""
    ok = [s for s in sizes if s["returncode"] == 0 and s["counts"].get("images")]
    if not ok:
        return {}
    small, large = (None, ok[0]) if len(ok) == 1 else (ok[-2], ok[-1])
    large_steps = {s["step"]: s for s in large["steps"]}
    small_steps = {s["step"]: s for s in small["steps"]} if small else {}
    costs = {}
    for name, step in large_steps.items():
        n_large = large["counts"]["images"]
        if small and name in small_steps:
            n_small = small["counts"]["images"]
            d_cpu = step["cpu_s"] - small_steps[name]["cpu_s"]
            d_wall = step["process_s"] - small_steps[name]["process_s"]
            cpu_per_image = max(0.0, d_cpu / (n_large - n_small))
            wall_per_image = max(0.0, d_wall / (n_large - n_small))
        else:  # one size: everything counts as per-image cost (pessimistic)
            cpu_per_image = step["cpu_s"] / n_large
            wall_per_image = step["process_s"] / n_large
        fixed = max(0.0, step["process_s"] - wall_per_image * n_large)
        costs[name] = {
            "cpu_s_per_image": cpu_per_image,
            "per_core_images_per_s": 1.0 / cpu_per_image if cpu_per_image > 0 else None,
            "fixed_wall_s": fixed,
            "measured_at_images": [small["counts"]["images"] if small else None, n_large],
        }
    return costs


def usable_cores(step: str, nodes: int, cores: int, efficiency: float) -> float:
    """Cores a stage can use on ``nodes`` x ``cores`` (see STAGE_PARALLELISM)."""
    kind = STAGE_PARALLELISM.get(step, CHECK_PARALLELISM)
    if kind == "ray":
        return nodes * cores * efficiency
    if kind == "node":
        return cores * efficiency
    return float(min(int(kind), cores))


def projection(
    sizes: list[dict[str, Any]], args: argparse.Namespace, costs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Projected wall time for ``--target-images`` on one node and on N Ray nodes."""
    ok = [s for s in sizes if s["returncode"] == 0 and s["counts"].get("images")]
    if not ok or not costs:
        return {}
    largest = ok[-1]["counts"]
    mp_ratio = args.mimic_megapixels / max(largest.get("mean_source_megapixels") or 1.0, 1e-6)
    bytes_per_image = largest.get("source_bytes", 0) / max(largest["images"], 1)
    bytes_ratio = args.mimic_mb_per_image * 1e6 / max(bytes_per_image, 1.0)
    scale = {"cxr_images": mp_ratio, "source_manifest": bytes_ratio}
    configs = [(1, args.cores_per_node), *[(n, args.cores_per_node) for n in args.nodes]]
    rows = []
    totals = {f"{n}x{c}": [0.0, 0.0] for n, c in configs}
    for step, cost in costs.items():
        row: dict[str, Any] = {
            "step": step,
            "parallelism": STAGE_PARALLELISM.get(step, CHECK_PARALLELISM),
            "per_core_images_per_s": cost["per_core_images_per_s"],
            "fixed_wall_s": cost["fixed_wall_s"],
            "size_scale": scale.get(step, 1.0),
        }
        for nodes, cores in configs:
            use = usable_cores(step, nodes, cores, args.efficiency)
            per_image = cost["cpu_s_per_image"] * args.target_images / use
            wall = cost["fixed_wall_s"] + per_image
            scaled = cost["fixed_wall_s"] + per_image * scale.get(step, 1.0)
            row[f"{nodes}x{cores}_s"] = wall
            row[f"{nodes}x{cores}_scaled_s"] = scaled
            totals[f"{nodes}x{cores}"][0] += wall
            totals[f"{nodes}x{cores}"][1] += scaled
        rows.append(row)
    return {
        "target_images": args.target_images,
        "configs": [f"{n} node(s) x {c} cores" for n, c in configs],
        "stages": rows,
        "total_s": {k: v[0] for k, v in totals.items()},
        "total_scaled_s": {k: v[1] for k, v in totals.items()},
        "assumptions": [
            f"per-image CPU cost of each step = marginal CPU-s between the two largest sizes "
            f"measured here ({ok[-2]['counts']['images'] if len(ok) > 1 else '-'} -> "
            f"{largest['images']} images), whole process tree; fixed cost = the rest of the "
            "step's wall (process start, imports, Ray start), unchanged on bigger machines",
            f"Ray stages (cxr_images, token_shards) use every core of every node at "
            f"{args.efficiency:.0%} efficiency (token_shards num_workers set to the cluster's "
            "cores); 'node' stages (DuckDB / Rust / torch threads, asset checks) use one "
            f"node's cores at {args.efficiency:.0%}; source_manifest at most its 4 threads; "
            "the rest one core (Python loops on the driver)",
            "steps run one after another (as measured); I/O bandwidth, a shared file system "
            "and Ray object transfer between nodes are not modelled",
            f"'scaled' columns: cxr_images cost x {mp_ratio:.1f} (MIMIC ~{args.mimic_megapixels}"
            f" MP per image vs {largest.get('mean_source_megapixels') or 0:.2f} MP here: "
            f"decode + resize ~ pixels), source_manifest cost x {bytes_ratio:.1f} "
            f"(~{args.mimic_mb_per_image} MB per MIMIC DICOM vs {bytes_per_image / 1e6:.2f} MB "
            "here: sha256 ~ bytes); report/label stages per study, as here",
            "the measuring machine's cores are shared with other jobs: its per-core rates "
            "are lower bounds for a dedicated node",
            "image_tokenizer runs a fixed number of debug steps and token_shards encodes with "
            "the debug VQ (32 px): their per-image cost here is the data path only; the chexmix"
            " preset's encode cost is measured by bench/tokenize.py (GPU work)",
        ],
    }


# ----------------------------------------------------------------------------------------------
# Report


def print_tables(sizes: list[dict[str, Any]], check: dict[str, Any], proj: dict[str, Any]) -> None:
    """Per-size table, per-step table, targets and projection."""
    print("\nPer size (whole run, dagster CLI + step subprocesses + Ray processes)")
    header = (
        f"{'factor':>6} {'studies':>7} {'images':>6} {'source MB':>9} {'gen s':>6} {'wall s':>7} "
        f"{'images/s':>8} {'CPU s':>7} {'peak RSS MB':>11} {'peak PSS MB':>11} {'status':>8}"
    )
    print(header)
    for s in sizes:
        c = s["counts"]
        print(
            f"{s['factor']:>5}x {c.get('studies', 0):>7} {c.get('images', 0):>6} "
            f"{(c.get('source_bytes') or 0) / 1e6:>9.0f} {s['generate']['seconds']:>6.0f} "
            f"{s['wall_s']:>7.0f} {s['images_per_s'] or 0:>8.2f} {s['cpu_s']:>7.0f} "
            f"{s['peak_rss_mb']:>11.0f} {s['peak_pss_mb']:>11.0f} {s['status']:>8}"
        )
    for m, c in zip(marginal(sizes), marginal(sizes, key="cpu_s"), strict=True):
        print(
            f"  marginal {m['from_factor']}x -> {m['to_factor']}x: {m['extra_images']} extra "
            f"images in {m['extra_s']:.0f} s wall, {c['extra_s']:.0f} CPU-s"
        )
    names = [s["step"] for s in sizes[-1]["steps"]] if sizes else []
    print("\nPer step: step wall s / images per step-s / CPU s / peak RSS MB (tree, step window)")
    print(f"{'step':<36}" + "".join(f"{str(s['factor']) + 'x':>30}" for s in sizes))
    for name in names:
        cells = []
        for s in sizes:
            step = next((r for r in s["steps"] if r["step"] == name), None)
            cells.append(
                f"{step['step_s']:>6.1f} {step['images_per_s'] or 0:>7.1f} {step['cpu_s']:>6.1f}"
                f" {step['peak_rss_mb']:>7.0f}"
                if step
                else f"{'-':>29}"
            )
        print(f"{name[:36]:<36}" + "".join(f"{c:>30}" for c in cells))
    if check.get("evaluated"):
        print(f"\nTargets {check['sizes'][0]}x -> {check['sizes'][-1]}x")
        labels = {
            "wall_s": "whole run, wall",
            "cpu_s": "whole run, CPU",
            "data_path_step_s": "data-path steps, wall",
            "data_path_cpu_s": "data-path steps, CPU",
        }
        for key, rates in check["marginal_images_per_s"].items():
            verdict = check["throughput_no_drop_over_20pct"][key]
            shown = ", ".join("noise" if r is None else f"{r:.2f}" for r in rates)
            print(
                f"  marginal images/s ({labels[key]}): {shown} -> no drop > 20%: "
                + {True: "MET", False: "NOT MET", None: "n/a"}[verdict]
            )
        print(
            f"  peak RSS {check['peak_rss_mb'][0]:.0f} -> {check['peak_rss_mb'][1]:.0f} MB, "
            f"limit 1.2 x first + {check['rss_slack_mb']:.0f} = {check['peak_rss_limit_mb']:.0f}"
            f" MB -> {'MET' if check['peak_rss_flat'] else 'NOT MET'}"
        )
        grew = [r for r in check["per_step"] if not r["within_target"]]
        for r in grew:
            print(
                f"  grew: {r['step']} {r['peak_rss_mb_first']:.0f} -> "
                f"{r['peak_rss_mb_last']:.0f} MB"
            )
    if proj:
        keys = list(proj["total_s"])
        print(
            f"\nProjection to {proj['target_images']:,} images (hours; 'scaled' = decode and "
            "hashing scaled to MIMIC image and file sizes)"
        )
        print(
            f"{'step':<36} {'parallel':>8} {'img/s/core':>10} {'fixed s':>7}"
            + "".join(f"{k + ' h':>10}{k + ' sc h':>12}" for k in keys)
        )
        for row in proj["stages"]:
            rate = row["per_core_images_per_s"]
            print(
                f"{row['step'][:36]:<36} {row['parallelism']!s:>8} "
                f"{(f'{rate:.1f}' if rate else 'const'):>10} {row['fixed_wall_s']:>7.0f}"
                + "".join(
                    f"{row[k + '_s'] / 3600:>10.2f}{row[k + '_scaled_s'] / 3600:>12.2f}"
                    for k in keys
                )
            )
        print(
            f"{'TOTAL':<36} {'':>8} {'':>10} {'':>7}"
            + "".join(
                f"{proj['total_s'][k] / 3600:>10.2f}{proj['total_scaled_s'][k] / 3600:>12.2f}"
                for k in keys
            )
        )
        print("Assumptions:")
        for line in proj["assumptions"]:
            print(f"  - {line}")


def main() -> None:
    """Parse arguments, run every size, analyse, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=400, help="studies at factor 1")
    parser.add_argument(
        "--factors", type=lambda v: [int(x) for x in v.split(",")], default=[1, 5, 20]
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic archives")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="archives, storage roots, logs (default: tmp)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep archives, storage and logs (reused next time)"
    )
    parser.add_argument("--interval", type=float, default=0.2, help="sampling period (s)")
    parser.add_argument(
        "--pss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also sum PSS (shared pages counted once)",
    )
    parser.add_argument(
        "--ray",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cxr_images and token_shards on Ray (their default)",
    )
    parser.add_argument("--image-size", type=int, default=256, help="cxr_images image_size")
    parser.add_argument("--vq-steps", type=int, default=20, help="image_tokenizer steps (debug)")
    parser.add_argument(
        "--vq-val-images", type=int, default=32, help="image_tokenizer max_val_images"
    )
    parser.add_argument("--min-success-rate", type=float, default=0.7, help="decode-rate floor")
    parser.add_argument("--rss-slack-mb", type=float, default=100.0, help="constant of the target")
    parser.add_argument("--target-images", type=int, default=377_000, help="MIMIC-CXR images")
    parser.add_argument("--cores-per-node", type=int, default=16)
    parser.add_argument("--nodes", type=lambda v: [int(x) for x in v.split(",")], default=[4, 16])
    parser.add_argument("--efficiency", type=float, default=0.8, help="parallel efficiency")
    parser.add_argument("--mimic-megapixels", type=float, default=7.5, help="per MIMIC image")
    parser.add_argument("--mimic-mb-per-image", type=float, default=12.5, help="per MIMIC DICOM")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-analyse the sizes of a saved result (no runs) and print the tables",
    )
    parser.add_argument("--save", type=Path, default=None, help="with --from-json: write here")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the sizes already in today's result file (same --base) and run the others",
    )
    args = parser.parse_args()
    args.factors = sorted(set(args.factors))
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        started = dt.datetime.fromisoformat(saved["created"])
        complete = saved.get("complete", True)
        payload = build_payload(args, saved["machine"], started, saved["sizes"], complete)
        print_tables(payload["sizes"], payload["targets"], payload["projection"])
        if args.save:
            save(args.save, payload)
            print(f"\nwrote {args.save}")
        return

    info = machine_info(PACKAGES, load_key="load_average_before")
    print(
        f"cpus={info['cpu_count']} load={tuple(round(x, 2) for x in info['load_average_before'])}"
        f" base={args.base} factors={args.factors} ray={'on' if args.ray else 'off'}"
    )
    made_work = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="chexmix-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scale" if args.base == 400 else f"scale-base{args.base}"
    out_path = args.out / f"{stem}-{dt.date.today().isoformat()}.json"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: blocks
    sizes: list[dict[str, Any]] = []
    started = dt.datetime.now(dt.UTC)
    if args.resume and out_path.exists():  # keep the sizes an interrupted run already measured
        saved = json.loads(out_path.read_text())
        if saved["args"]["base"] == args.base:
            sizes = [s for s in saved["sizes"] if s["returncode"] == 0]
            sizes = [s for s in sizes if s["factor"] in args.factors]
            started = dt.datetime.fromisoformat(saved["created"])
            info = {**saved["machine"], "resumed_load_average": load_average()}
            print(f"resuming {out_path}: have {[s['factor'] for s in sizes]}", flush=True)
    done = {s["factor"] for s in sizes}
    try:
        for factor in args.factors:
            if factor in done:
                continue
            sizes.append(run_size(args, factor, work))
            sizes.sort(key=lambda s: s["factor"])
            if factor != args.factors[-1]:  # partial results survive an interrupted run
                save(out_path, build_payload(args, info, started, sizes, complete=False))
    finally:
        if made_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    info["load_average_after"] = load_average()
    payload = build_payload(args, info, started, sizes, complete=True)
    print_tables(sizes, payload["targets"], payload["projection"])
    save(out_path, payload)
    print(f"\nwrote {out_path}")


def build_payload(
    args: argparse.Namespace,
    info: dict[str, Any],
    started: dt.datetime,
    sizes: list[dict[str, Any]],
    complete: bool,
) -> dict[str, Any]:
    """The JSON document: args, machine, method, sizes and the analyses."""
    costs = stage_costs(sizes)
    return {
        "created": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "complete": complete,
        "args": relative_args(args),
        "machine": info,
        "method": {
            "pipeline": "dagster asset materialize -m pipelines.definitions --select "
            + ",".join(DATA_ASSETS)
            + " (their asset checks run too), fresh storage root and DAGSTER_HOME per size",
            "run_config": run_config(args),
            "memory": f"RSS (and PSS) summed over the CLI process and all descendants (step "
            f"subprocesses, Ray gcs_server/raylet/workers), sampled every {args.interval} s; "
            "peak = max over samples",
            "step_window": "from the step's STEP_WORKER_STARTING to the next step's (the "
            "step subprocess's imports and Ray start-up included); step_s = STEP_START -> "
            "STEP_SUCCESS",
            "images_per_s": "decoded images of the size / seconds (every step uses the same "
            "image count, so steps compare directly)",
            "marginal": "extra images / extra seconds (or CPU seconds) between consecutive "
            "sizes: fixed costs (imports, Ray start-up, VQ steps) cancel",
            "cpu": "CPU seconds of the tree in the window (lower bound: a process's CPU after "
            "its last sample is missed); less sensitive than wall time to other jobs on a "
            "shared machine",
        },
        "sizes": sizes,
        "marginal": {
            key: marginal(sizes, key=key)
            for key in ("wall_s", "cpu_s", "data_path_step_s", "data_path_cpu_s")
        },
        "data_path_steps": DATA_PATH,
        "targets": targets(sizes, args.rss_slack_mb),
        "stage_costs": costs,
        "projection": projection(sizes, args, costs),
    }


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write the JSON atomically (a partial result may be overwritten later)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
