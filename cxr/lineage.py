"""Lineage: one catalog row per materialization, and the query that walks it upstream.

Each row says what an asset wrote (paths + content hash), exactly which inputs it read (asset
key + content hash of what it read), with which code (git sha + dirty flag) and config (hash),
in which Dagster run and when. Because inputs are identified by content hash, the chain from any
output back to the source manifest is a sequence of exact joins, not a guess by timestamps.

CLI: ``python -m cxr.lineage <catalog.duckdb> <asset key | output path>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from cxr.catalog import Catalog

LINEAGE_DDL = """
CREATE TABLE IF NOT EXISTS lineage (
    asset_key VARCHAR NOT NULL,
    partition_key VARCHAR,
    output_paths VARCHAR[] NOT NULL,
    content_hash VARCHAR NOT NULL,
    input_assets VARCHAR[] NOT NULL,
    input_hashes VARCHAR[] NOT NULL,
    code_version VARCHAR NOT NULL,
    config_hash VARCHAR NOT NULL,
    config_json VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (asset_key, run_id, content_hash)
)"""


@dataclass(frozen=True)
class LineageRecord:
    """One materialization's provenance."""

    asset_key: str
    output_paths: list[str]
    content_hash: str
    inputs: dict[str, str]
    config: dict[str, Any]
    run_id: str
    partition_key: str | None = None
    code_version: str = field(default_factory=lambda: git_code_version())

    @property
    def config_hash(self) -> str:
        """sha256 of the canonical JSON config."""
        return config_hash(self.config)


def config_hash(config: dict[str, Any]) -> str:
    """Stable hash of a JSON-able config mapping."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.cache
def git_code_version(repo: str | None = None) -> str:
    """``<git sha>`` or ``<git sha>-dirty`` of the checkout this code runs from, else 'unknown'."""
    cwd = repo or str(Path(__file__).resolve().parents[1])
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def record(catalog: Catalog, rec: LineageRecord) -> None:
    """Insert (or replace, for the same asset/run/hash) one lineage row atomically."""

    def insert(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(LINEAGE_DDL)
        con.execute(
            "INSERT OR REPLACE INTO lineage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                rec.asset_key,
                rec.partition_key,
                rec.output_paths,
                rec.content_hash,
                list(rec.inputs),
                list(rec.inputs.values()),
                rec.code_version,
                rec.config_hash,
                json.dumps(rec.config, sort_keys=True, default=str),
                rec.run_id,
                dt.datetime.now(dt.UTC),
            ],
        )

    catalog.write(insert)


def _row_dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def upstream_chain(catalog_path: Path, target: str) -> list[dict[str, Any]]:
    """The lineage rows from ``target`` (an asset key or an output path) back to the sources.

    Returns:
        Rows in walk order (target first); each input is resolved to the most recent
        materialization of that asset whose content hash equals the hash that was read.

    Raises:
        LookupError: No materialization of ``target`` is recorded, or an input's exact version is
            missing from the catalog (the chain would be a guess).
    """
    con = duckdb.connect(str(catalog_path), read_only=True)
    try:
        start = _row_dicts(
            con.execute(
                """SELECT * FROM lineage
                   WHERE asset_key = ? OR list_contains(output_paths, ?)
                   ORDER BY recorded_at DESC LIMIT 1""",
                [target, str(Path(target).resolve()) if "/" in target else target],
            )
        )
        if not start:
            raise LookupError(f"no lineage recorded for {target!r} in {catalog_path}")
        chain, frontier, seen = [], [start[0]], set()
        while frontier:
            row = frontier.pop(0)
            if (row["asset_key"], row["content_hash"]) in seen:
                continue
            seen.add((row["asset_key"], row["content_hash"]))
            chain.append(row)
            for asset, content_hash in zip(row["input_assets"], row["input_hashes"], strict=True):
                found = _row_dicts(
                    con.execute(
                        """SELECT * FROM lineage WHERE asset_key = ? AND content_hash = ?
                           ORDER BY recorded_at DESC LIMIT 1""",
                        [asset, content_hash],
                    )
                )
                if not found:
                    raise LookupError(
                        f"{row['asset_key']} read {asset} version {content_hash[:12]}, which is "
                        "not recorded in the lineage table"
                    )
                frontier.append(found[0])
        return chain
    finally:
        con.close()


def format_chain(chain: list[dict[str, Any]]) -> str:
    """Human-readable chain, one block per materialization."""
    lines = []
    for depth, row in enumerate(chain):
        lines.append(
            f"{'  ' * min(depth, 1)}{row['asset_key']}  hash={row['content_hash'][:16]}  "
            f"run={row['run_id'][:8]}  code={row['code_version'][:12]}  "
            f"config={row['config_hash']}  at={row['recorded_at']:%Y-%m-%d %H:%M:%S}"
        )
        for path in row["output_paths"]:
            lines.append(f"      wrote {path}")
        for asset, content_hash in zip(row["input_assets"], row["input_hashes"], strict=True):
            lines.append(f"      read  {asset} {content_hash[:16]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: print the upstream chain of an asset or output path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("catalog", type=Path, help="path to catalog.duckdb")
    parser.add_argument("target", help="asset key (e.g. cxr_images) or an output path")
    args = parser.parse_args(argv)
    try:
        chain = upstream_chain(args.catalog, args.target)
    except LookupError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(format_chain(chain) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
