"""Evaluate checkpoints from the command line (what the sensor does, without the daemon).

    python -m pipelines.evaluate list
    python -m pipelines.evaluate register PATH [--key KEY] [--run]
    python -m pipelines.evaluate run (--all | KEY ...) [--only-new] [--config FILE]

``register`` records any checkpoint directory (a published one with ``checkpoint.json`` or a
``train_lm`` folder with ``COMPLETE``) so that the sensor, or ``run``, evaluates it. ``run``
adds the partitions to the Dagster instance ($DAGSTER_HOME, default ``<project>/.dagster_home``
as ``make`` sets it) and materializes the four evaluation assets per checkpoint, then the paired
comparisons and the leaderboard, as runs the UI shows. ``--config`` takes a Dagster run config
YAML (``ops: {findings_eval: {config: {...}}, ...}``, e.g. ``pipelines/run_config/demo.yaml``);
only the evaluation assets' entries are used. Also ``chexmix evaluate ...``.

Exit codes: 0 done (or nothing to do), 1 an evaluation failed, 2 usage error / unknown key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import dagster as dg
from tqdm import tqdm

from pipelines.checkpoints.registry import discover, register
from pipelines.instance import dagster_instance
from pipelines.partitions import checkpoints_partitions, evaluated_partitions
from pipelines.resources import StorageResource


def evaluation_run_config(path: str | Path | None) -> dict[str, Any]:
    """The evaluation assets' part of a run config YAML file (``{}`` for None).

    Raises:
        ValueError: The file is not a mapping with an ``ops`` mapping.
    """
    from assets.evaluation import EVAL_ASSETS

    if path is None:
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("ops", {}), dict):
        raise ValueError(f"{path}: expected a run config mapping with an 'ops' mapping")
    names = {key.to_python_identifier() for a in EVAL_ASSETS for key in a.keys}
    ops = {name: entry for name, entry in (data.get("ops") or {}).items() if name in names}
    return {"ops": ops} if ops else {}


def evaluate(
    keys: list[str], instance: dg.DagsterInstance, run_config: dict[str, Any] | None = None
) -> bool:
    """Add partitions, materialize the evaluation assets per key, then the leaderboard."""
    from assets.evaluation import EVAL_ASSETS
    from pipelines.resources import default_resources

    existing = set(instance.get_dynamic_partitions(checkpoints_partitions.name))
    new = [k for k in keys if k not in existing]
    if new:
        instance.add_dynamic_partitions(checkpoints_partitions.name, new)
    ok = True
    resources = default_resources()
    # a bar on a terminal (stderr), nothing in logs and pipes; Dagster's own lines scroll above
    bar = tqdm(keys, desc="evaluating checkpoints", unit="checkpoint", disable=None)
    for key in bar:
        bar.set_postfix_str(key)
        result = dg.materialize(
            EVAL_ASSETS,
            partition_key=key,
            instance=instance,
            resources=resources,
            run_config=run_config or None,
            raise_on_error=False,
        )
        tqdm.write(f"{key}: {'evaluated' if result.success else 'FAILED'}", file=sys.stdout)
        ok &= result.success
    if keys:
        ok &= rebuild_leaderboard(instance)
    return ok


def rebuild_leaderboard(instance: dg.DagsterInstance) -> bool:
    """Materialize the paired comparisons and the leaderboard; True if both ran."""
    from assets.eval_comparisons import eval_comparisons
    from assets.leaderboard import leaderboard
    from pipelines.resources import default_resources

    board = dg.materialize(
        [eval_comparisons, leaderboard],
        instance=instance,
        resources=default_resources(),
        raise_on_error=False,
    )
    return board.success


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="discovered checkpoints and whether they are evaluated")
    reg = sub.add_parser("register", help="register a checkpoint directory for evaluation")
    reg.add_argument("path")
    reg.add_argument("--key", default=None, help="partition key (default reg-<folder name>)")
    reg.add_argument("--run", action="store_true", help="evaluate it now")
    reg.add_argument("--config", default=None, help="run config YAML of the evaluation assets")
    run = sub.add_parser("run", help="evaluate checkpoints now")
    run.add_argument("keys", nargs="*")
    run.add_argument("--all", action="store_true", help="every discovered checkpoint")
    run.add_argument("--only-new", action="store_true", help="skip evaluated checkpoints")
    run.add_argument("--config", default=None, help="run config YAML of the evaluation assets")
    args = parser.parse_args(argv)
    try:
        run_config = evaluation_run_config(getattr(args, "config", None))
    except (OSError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    root = StorageResource().root_path
    instance = dagster_instance()
    if args.command == "list":
        done = evaluated_partitions(instance)
        for ref in discover(root):
            mark = "evaluated" if ref.key in done else "pending"
            sys.stdout.write(f"{ref.key}\t{ref.origin}\t{mark}\t{ref.path}\n")
        return 0
    if args.command == "register":
        ref = register(root, args.path, args.key)
        sys.stdout.write(f"registered {ref.key} -> {ref.path}\n")
        return 0 if not args.run or evaluate([ref.key], instance, run_config) else 1
    known = {r.key for r in discover(root)}
    keys = sorted(known) if args.all else args.keys
    unknown = [k for k in keys if k not in known]
    if unknown:
        sys.stderr.write(f"error: unknown checkpoint key(s) {unknown}; see `list`\n")
        return 2
    if args.only_new:
        done = evaluated_partitions(instance)
        keys = [k for k in keys if k not in done]
    if not keys:
        sys.stdout.write("nothing to evaluate\n")
        return 0
    return 0 if evaluate(keys, instance, run_config) else 1


if __name__ == "__main__":
    raise SystemExit(main())
