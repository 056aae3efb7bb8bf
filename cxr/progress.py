"""Progress people can see: rate-limited lines with done/total, rate and ETA.

:class:`Progress` turns frequent updates (every training step, every shard) into a line at most
every ``every_s`` seconds (and at the end), for a log or a console. :class:`ProgressLog` and
:func:`tailing` carry progress from a process that cannot log to the caller's log (a Ray Train
worker) back to it: the worker appends JSON lines to a file, a thread of the caller tails it.
Plain Python: no dagster, no ray.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Metric names shown in progress lines, with their format, in this order.
METRIC_FORMATS = {
    "loss": "loss {:.4f}",
    "image_loss": "image {:.4f}",
    "text_loss": "text {:.4f}",
    "recon_loss": "recon {:.4f}",
    "val_psnr": "val PSNR {:.2f}",
    "tokens_per_s": "{:,.0f} tok/s",
    "steps_per_second": "{:.2f} steps/s",
    "images_per_s": "{:,.1f} img/s",
    "step_s": "{:.2f} s/step",
}


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Rate-limited progress lines for one long piece of work.

    Args:
        label: What is running (``stage1 training``), first on every line.
        total: Units of work in all (``None``: unknown, no percentage or ETA).
        emit: Called with each line (``context.log.info``, ``print``, ``logger.info``).
        unit: Name of one unit of work (``step``, ``shard``, ``checkpoint``).
        every_s: At most one line per this many seconds, besides the first and the last.
        clock: Monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        emit: Callable[[str], None],
        unit: str = "step",
        every_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.emit, self.unit = label, total, emit, unit
        self.every_s, self.clock = every_s, clock
        self.start = clock()
        self._first: tuple[float, float] | None = None  # (time, done) of the first update
        self._last_emit: float | None = None
        self.done: float = 0  # units finished at the last update
        self.lines = 0  # lines emitted

    def update(self, done: float, **metrics: Any) -> str | None:
        """Record that ``done`` units are finished; return the line when one was emitted."""
        now = self.clock()
        self.done = done
        if self._first is None:
            self._first = (now, float(done))
        finished = self.total is not None and done >= self.total
        if not finished and self._last_emit is not None and now - self._last_emit < self.every_s:
            return None
        line = self.line(done, metrics, now)
        self._last_emit = now
        self.lines += 1
        self.emit(line)
        return line

    def rate(self, done: float, now: float) -> float | None:
        """Units per second since the first update (start-up costs excluded), else overall."""
        t0, d0 = self._first if self._first is not None else (self.start, 0.0)
        if now - t0 > 0 and done > d0:
            return (done - d0) / (now - t0)
        if now - self.start > 0 and done > 0:
            return done / (now - self.start)
        return None

    def line(self, done: float, metrics: dict[str, Any], now: float | None = None) -> str:
        """``label: step 40/150 (27%) loss 3.2011 1,234 tok/s elapsed 1m10s ETA 3m12s``."""
        now = self.clock() if now is None else now
        parts = [f"{self.label}: {self.unit} {done:g}"]
        if self.total:
            parts[0] += f"/{self.total} ({100 * done / self.total:.0f}%)"
        for key, fmt in METRIC_FORMATS.items():
            value = metrics.get(key)
            if isinstance(value, int | float) and value == value:  # not NaN
                parts.append(fmt.format(value))
        for key, value in metrics.items():
            if key not in METRIC_FORMATS and isinstance(value, int | float | str):
                parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        parts.append(f"elapsed {format_duration(now - self.start)}")
        rate = self.rate(done, now)
        if self.total and rate and done < self.total:
            parts.append(f"ETA {format_duration((self.total - done) / rate)}")
        return " ".join(parts)


class ProgressLog:
    """Progress records as JSON lines in a file: one writer appends, one reader tails.

    Writing never raises: progress must not fail the work it reports on.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` (JSON-serializable) as one line."""
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=float) + "\n")
        except (OSError, TypeError, ValueError) as e:
            logger.warning("could not append progress to %s: %s", self.path, e)

    def read_new(self) -> list[dict[str, Any]]:
        """Records appended since the last call (complete lines only)."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        records = []
        for raw in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(raw))
        return records


@contextlib.contextmanager
def tailing(
    path: str | Path, on_record: Callable[[dict[str, Any]], None], poll_s: float = 2.0
) -> Iterator[ProgressLog]:
    """Call ``on_record`` for each record appended to ``path`` while the block runs.

    A daemon thread polls the file every ``poll_s`` seconds; records still unread when the
    block ends are delivered before this returns. An error in ``on_record`` is logged, not
    raised.
    """
    reader = ProgressLog(path)
    stop = threading.Event()

    def deliver() -> None:
        for record in reader.read_new():
            try:
                on_record(record)
            except Exception:
                logger.exception("progress callback failed on %s", record)

    def run() -> None:
        while not stop.wait(poll_s):
            deliver()

    thread = threading.Thread(target=run, name="progress-tail", daemon=True)
    thread.start()
    try:
        yield reader
    finally:
        stop.set()
        thread.join()
        deliver()


class PassProgress:
    """Progress of work done as successive passes over rows (each pass a loop of batches).

    Called as ``sink(done, total)`` after every batch; a pass starts when ``done`` does not
    grow or ``total`` changes. Emits at most one line per ``every_s`` seconds (none for work
    shorter than that): ``label: pass 3, 320/1000 rows (32%), elapsed 2m10s, pass ETA 48s``.
    """

    def __init__(
        self,
        label: str,
        emit: Callable[[str], None],
        every_s: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.emit, self.every_s, self.clock = label, emit, every_s, clock
        self.start = self._last_emit = clock()
        self.passes = 0
        self._pass: tuple[int, int, float] | None = None  # (total, first done, its time)
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        """Record that ``done`` of the current pass's ``total`` rows are finished."""
        now = self.clock()
        if self._pass is None or done <= self._done or total != self._pass[0]:
            self.passes += 1
            self._pass = (total, done, now)
        self._done = done
        if now - self._last_emit < self.every_s:
            return
        self._last_emit = now
        _, first_done, first_time = self._pass
        line = (
            f"{self.label}: pass {self.passes}, {done}/{total} rows "
            f"({100 * done / max(total, 1):.0f}%), elapsed {format_duration(now - self.start)}"
        )
        if done < total and done > first_done and now > first_time:
            rate = (done - first_done) / (now - first_time)
            line += f", pass ETA {format_duration((total - done) / rate)}"
        self.emit(line)
