"""The one way the data path opens a scratch (in-memory) DuckDB connection."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DEFAULT_THREADS", "THREADS_ENV", "scratch_connection"]

#: Threads of a scratch query unless ``$CHEXMIX_DUCKDB_THREADS`` says otherwise: bounded, so a
#: step's query shares the machine with Ray workers and other steps instead of taking every core.
DEFAULT_THREADS = 2
THREADS_ENV = "CHEXMIX_DUCKDB_THREADS"


def scratch_connection(threads: int | None = None) -> Any:
    """An in-memory ``duckdb`` connection with a bounded thread count.

    Args:
        threads: Threads; None: ``$CHEXMIX_DUCKDB_THREADS``, else ``DEFAULT_THREADS``.

    Raises:
        ValueError: A thread count below 1 (argument or environment).
    """
    import duckdb

    if threads is None:
        raw = os.environ.get(THREADS_ENV, "")
        try:
            threads = int(raw) if raw else DEFAULT_THREADS
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be an integer >= 1, got {raw!r}") from None
    if threads < 1:
        raise ValueError(f"DuckDB threads must be >= 1, got {threads}")
    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    return con
