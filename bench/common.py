"""Helpers shared by the benchmark scripts: machine info, load average, process-tree sampling.

Import as ``from bench.common import ...`` with the repository root on ``sys.path`` (every
script under ``bench/`` puts it first).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

#: The data assets up to the token shards, in materialization order (what the benchmarks run).
#: Select them by these names; look their materializations up by asset key, not by step.
DATA_ASSETS = [
    "source_manifest",
    "studies",
    "cxr_images",
    "ingest_quarantine",
    "report_sections",
    "finding_labels",
    "splits",
    "text_tokenizer",
    "image_tokenizer",
    "vocabulary",
    "token_shards",
]
#: The run's steps for them: ``cxr_images`` is one step that also materializes ingest_quarantine.
DATA_STEPS = [a for a in DATA_ASSETS if a != "ingest_quarantine"]


#: The repository root (``bench/..``).
REPO = Path(__file__).resolve().parents[1]


def repo_relative(path: str | Path) -> str:
    """``path`` as results should record it: never a machine's absolute path.

    Relative to the repository when inside it, ``../<sibling>/...`` next to it (the shared data
    folder), ``<tmp>/...`` under the temp folder, else ``<outside repo>/<name>``.
    """
    resolved = Path(path).expanduser().resolve()
    for root, prefix in (
        (REPO, ""),
        (REPO.parent, "../"),
        (Path(tempfile.gettempdir()).resolve(), "<tmp>/"),
    ):
        if resolved == root:
            return prefix.rstrip("/") or "."
        if resolved.is_relative_to(root):
            return prefix + str(resolved.relative_to(root))
    return f"<outside repo>/{resolved.name}"


def scrub_paths(text: str) -> str:
    """Free text (a command line, a log line, a profile) with the same substitutions."""
    for root, prefix in (
        (REPO, ""),
        (REPO.parent, "../"),
        (Path(tempfile.gettempdir()).resolve(), "<tmp>/"),
    ):
        text = text.replace(f"{root}/", prefix)
    return text


def relative_args(args: Any) -> dict[str, Any]:
    """``vars(args)`` of an argparse namespace with every path made :func:`repo_relative`."""
    return {k: repo_relative(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def package_versions(packages: list[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for pkg in packages:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages of the machine."""
    return os.getloadavg()


def machine_info(
    packages: list[str],
    load_key: str = "load_average_before",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """CPU count and affinity, load average (under ``load_key``), platform, Python, versions.

    Args:
        packages: Distributions whose versions are recorded under ``versions``.
        load_key: Key of the load average taken now (``load_average_before`` /
            ``load_average_start``); callers add the matching ``..._after`` / ``..._end`` later.
        extra: Script-specific entries (torch threads, ...) placed right after the load average.
    """
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        load_key: load_average(),
        **(extra or {}),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": sys.version.split()[0],
        "versions": package_versions(packages),
    }


def process_label(proc: psutil.Process) -> str:
    """Short label of a process: Ray's title (``ray::IDLE``), a daemon name or the script."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    if not cmd:
        try:
            return proc.name()
        except psutil.Error:
            return "?"
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0].split(".")[0][:40]
    head = Path(cmd[0]).name
    if head.startswith("python") and "-c" in cmd[1:2] and "multiprocessing" in " ".join(cmd):
        return "python (multiprocessing child)"
    if head.startswith("python"):
        args = [a for a in cmd[1:] if not a.startswith("-")]
        if "-m" in cmd[1:3]:
            head = cmd[cmd.index("-m") + 1]
        elif args:
            head = Path(args[0]).name
    if head in ("dagster", "dagster-webserver") or head.endswith("/dagster"):
        head = "dagster " + scrub_paths(" ".join(cmd[1:3]))
    return head[:40]


@dataclass
class TreeSample:
    """One sample of a process tree (sums over the root and all its descendants)."""

    t: float  # time.time()
    rss: int
    pss: int  # 0 when PSS is not sampled
    cpu_s: float  # cumulative CPU seconds of the tree since the sampler started
    num_procs: int
    rss_by_process: dict[str, int]  # "label [pid]" -> RSS


@dataclass
class ProcessTreeSampler:
    """Samples RSS (and optionally PSS) and CPU of a process and all its descendants.

    Every ``interval`` seconds a thread lists the root and its children (recursively: a Dagster
    step subprocess, a local Ray's gcs_server, raylet and workers are all descendants), sums
    their RSS (shared pages counted once per process, as ``ps`` does) and, with ``pss=True``,
    their PSS (shared pages split between the processes that map them: the tree's real
    footprint), and accumulates CPU seconds. CPU of a process after its last sample is missed,
    so CPU figures are lower bounds.

    Use as a context manager, or ``start()`` / ``stop()``.
    """

    root_pid: int
    interval: float = 0.2
    pss: bool = True
    samples: list[TreeSample] = field(default_factory=list)
    peak_rss: int = 0
    peak_breakdown: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._root = psutil.Process(self.root_pid)
        self._cpu_last: dict[tuple[int, float], float] = {}
        self._cpu_total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tree-sampler")

    def _sample(self) -> None:
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return
        rss = pss = 0
        by_label: dict[str, int] = {}
        alive = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    if self.pss:
                        mem = proc.memory_full_info()
                        pss += mem.pss
                    else:
                        mem = proc.memory_info()
                    times = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
            except psutil.Error:
                continue
            alive += 1
            rss += mem.rss
            cpu = times.user + times.system
            self._cpu_total += max(0.0, cpu - self._cpu_last.get(key, 0.0))
            self._cpu_last[key] = cpu
            label = f"{process_label(proc)} [{proc.pid}]"
            by_label[label] = by_label.get(label, 0) + mem.rss
        if not alive:
            return
        self.samples.append(TreeSample(time.time(), rss, pss, self._cpu_total, alive, by_label))
        if rss > self.peak_rss:
            self.peak_rss = rss
            self.peak_breakdown = dict(sorted(by_label.items(), key=lambda kv: -kv[1]))

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            self._sample()
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - start)))

    def start(self) -> ProcessTreeSampler:
        """Start sampling in a daemon thread."""
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (after one last sample)."""
        self._stop.set()
        self._thread.join()
        self._sample()

    def __enter__(self) -> ProcessTreeSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def peak_pss(self) -> int:
        """Largest PSS sum seen (0 when PSS is not sampled)."""
        return max((s.pss for s in self.samples), default=0)

    def window(self, t0: float, t1: float, top: int = 8) -> dict[str, Any]:
        """Peak RSS / PSS sums and CPU seconds between two ``time.time()`` stamps.

        CPU is the cumulative tree CPU at the last sample before ``t1`` minus that at the
        last sample before ``t0``. ``peak_breakdown_mb``: the ``top`` largest processes (RSS)
        at the window's peak sample.
        """
        inside = [s for s in self.samples if t0 <= s.t < t1]
        before = [s for s in self.samples if s.t < t0]
        upto = [s for s in self.samples if s.t < t1]
        cpu0 = before[-1].cpu_s if before else 0.0
        cpu1 = upto[-1].cpu_s if upto else cpu0
        peak = max(inside, key=lambda s: s.rss, default=None)
        breakdown = sorted((peak.rss_by_process if peak else {}).items(), key=lambda kv: -kv[1])
        return {
            "samples": len(inside),
            "peak_rss_bytes": peak.rss if peak else 0,
            "peak_breakdown_mb": {k: round(v / 2**20, 1) for k, v in breakdown[:top]},
            "peak_pss_bytes": max((s.pss for s in inside), default=0),
            "max_procs": max((s.num_procs for s in inside), default=0),
            "cpu_s": cpu1 - cpu0,
        }
