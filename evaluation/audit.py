"""Audit one evaluation number: print everything it came from.

    python -m evaluation.audit <catalog.duckdb> --checkpoint KEY --task findings \
        --metric macro_auroc [--method model] [--observation ''] [--mask-ratio 0.4] [--setting S]

The chain: the ``eval_results`` row -> its evaluation run (config JSON + hash, code version,
Dagster and MLflow runs, per-sample file) -> the checkpoint (path, content hash, stage, step,
training run and config, the token-shard / tokenizer / vocabulary hashes it was trained on) ->
the lineage rows from the per-sample file back through the checkpoint(s), token shards,
tokenizers, vocabulary, splits, labels and studies to the source manifest (file count + hash).
Every link is an exact content-hash join; a missing link is an error, never a guess.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import duckdb

from cxr.lineage import format_chain, upstream_chain
from cxr.storage import file_sha256


def find_rows(catalog_path: Path, filters: dict[str, Any]) -> list[dict[str, Any]]:
    """``eval_results`` rows matching ``filters`` (column -> value; None = any)."""
    clauses, params = [], []
    for column, value in filters.items():
        if value is None:
            continue
        if column == "mask_ratio":
            clauses.append("abs(mask_ratio - ?) < 1e-9")
        else:
            clauses.append(f"{column} = ?")
        params.append(value)
    con = duckdb.connect(str(catalog_path), read_only=True)
    try:
        cursor = con.execute(
            f"SELECT * FROM eval_results WHERE {' AND '.join(clauses) or 'TRUE'} "
            "ORDER BY checkpoint_id, task, method, metric, observation, mask_ratio, setting",
            params,
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    finally:
        con.close()


def audit(catalog_path: Path, row: dict[str, Any]) -> str:
    """The full provenance of one ``eval_results`` row, as text.

    Raises:
        LookupError: A link of the chain is missing from the catalog.
    """
    con = duckdb.connect(str(catalog_path), read_only=True)
    try:
        cursor = con.execute(
            "SELECT * FROM eval_runs WHERE checkpoint_id = ? AND task = ? AND run_id = ?",
            [row["checkpoint_id"], row["task"], row["run_id"]],
        )
        names = [d[0] for d in cursor.description]
        runs = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    finally:
        con.close()
    if not runs:
        raise LookupError(f"no eval_runs entry for run {row['run_id']} of {row['task']}")
    run = runs[0]
    manifest = json.loads(run["checkpoint_manifest"])
    lines = [
        "RESULT",
        f"  {row['task']} / {row['method']} / {row['metric']}"
        + (f" / {row['observation']}" if row["observation"] else "")
        + f" / mask {row['mask_ratio']:g}"
        + (f" / {row['setting']}" if row["setting"] else ""),
        f"  value={row['value']} CI=[{row['ci_low']}, {row['ci_high']}] n={row['n']} "
        f"status={row['status']}",
        "EVALUATION RUN",
        f"  dagster run {run['run_id']}  mlflow run {run['mlflow_run_id']}  "
        f"code {run['code_version']}  at {run['recorded_at']}",
        f"  config hash {run['eval_config_hash']}: {run['eval_config_json']}",
        f"  per-sample outputs {row['samples_path']}",
        "CHECKPOINT",
        f"  {row['checkpoint_id']} at {run['checkpoint_path']}",
        f"  content hash {run['checkpoint_hash']}  origin {manifest.get('origin')}  "
        f"stage {manifest.get('stage')}  arm {manifest.get('arm', '-')}  "
        f"step {manifest.get('step')}",
        f"  training: mlflow run {manifest.get('mlflow_run_id')}  dagster run "
        f"{manifest.get('dagster_run_id')}  code {manifest.get('code_version')}",
        f"  train config {json.dumps(manifest.get('train_config'), sort_keys=True)}",
        f"  trained on token shards {manifest.get('token_shards_hash')}",
        f"  image tokenizer {manifest.get('image_tokenizer_sha256')}  text tokenizer "
        f"{manifest.get('text_tokenizer_sha256')}  vocabulary {manifest.get('vocabulary_sha256')}",
    ]
    if manifest.get("init_checkpoint"):
        lines.append(f"  initialised from {manifest['init_checkpoint']}")
    chain = upstream_chain(catalog_path, row["samples_path"])
    if chain[0]["asset_key"] != f"{row['task']}_eval":
        raise LookupError(f"lineage of {row['samples_path']} does not start at an eval asset")
    lines += ["LINEAGE (newest first; every input resolved by content hash)", format_chain(chain)]
    sources = [r for r in chain if r["asset_key"] == "source_manifest"]
    if not sources:
        raise LookupError("the lineage chain does not reach the source manifest")
    source = sources[0]
    path = Path(source["output_paths"][0])
    if path.is_file() and file_sha256(path) == source["content_hash"]:
        rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]
        state = f"{rows} files, unchanged since"
    else:
        state = "file replaced since (a newer scan); the hash above is what was read"
    lines += ["SOURCE MANIFEST", f"  {path}  sha256 {source['content_hash']}  {state}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--metric", required=True)
    parser.add_argument("--method", default="model")
    parser.add_argument("--observation", default="")
    parser.add_argument("--mask-ratio", type=float, default=None)
    parser.add_argument("--setting", default=None)
    args = parser.parse_args(argv)
    rows = find_rows(
        args.catalog,
        {
            "checkpoint_id": args.checkpoint,
            "task": args.task,
            "metric": args.metric,
            "method": args.method,
            "observation": args.observation,
            "mask_ratio": args.mask_ratio,
            "setting": args.setting,
        },
    )
    if not rows:
        sys.stderr.write("error: no eval_results row matches\n")
        return 1
    try:
        sys.stdout.write("\n\n".join(audit(args.catalog, r) for r in rows) + "\n")
    except LookupError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
