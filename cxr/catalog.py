"""The DuckDB catalog: one database file under the storage root.

It holds views over every Parquet output, so ``duckdb <storage>/catalog.duckdb "select ..."``
works after a run.

Writers serialise on a file lock next to the database and retry briefly when another process
(a user's open ``duckdb`` shell, say) holds DuckDB's own lock, so concurrent runs never surface a
lock error; each write is one transaction.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import duckdb
from filelock import FileLock

T = TypeVar("T")
CATALOG_NAME = "catalog.duckdb"


class Catalog:
    """Handle on the catalog database file."""

    def __init__(self, path: Path, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s

    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn`` in one transaction on a read-write connection, serialised across processes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=self.lock_timeout_s):
            con = self._connect(read_only=False)
            try:
                con.execute("BEGIN TRANSACTION")
                result = fn(con)
                con.execute("COMMIT")
                return result
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.close()

    def read(self, sql: str, params: list[object] | None = None) -> list[tuple]:
        """Run a read-only query and return all rows."""
        with FileLock(str(self.path) + ".lock", timeout=self.lock_timeout_s):
            con = self._connect(read_only=True)
            try:
                return con.execute(sql, params or []).fetchall()
            finally:
                con.close()

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection held under the lock (for results fetched as frames)."""
        with FileLock(str(self.path) + ".lock", timeout=self.lock_timeout_s):
            con = self._connect(read_only=True)
            try:
                yield con
            finally:
                con.close()

    def register_views(self, views: Mapping[str, str]) -> None:
        """Create or replace views ``name -> parquet path or glob`` (absolute paths)."""

        def create(con: duckdb.DuckDBPyConnection) -> None:
            for name, location in views.items():
                if not name.isidentifier():
                    raise ValueError(f"view name {name!r} is not a plain SQL identifier")
                escaped = str(location).replace("'", "''")
                con.execute(
                    f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{escaped}')"
                )

        self.write(create)

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                if read_only and not self.path.exists():
                    raise FileNotFoundError(f"catalog {self.path} does not exist yet")
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as exc:  # another process holds DuckDB's file lock
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"catalog {self.path} stayed locked by another process for "
                        f"{self.lock_timeout_s:.0f}s: {exc}"
                    ) from exc
                time.sleep(0.2)
