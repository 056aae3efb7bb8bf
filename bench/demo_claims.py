"""Re-check the demo's four CheXmix claims from the catalog and print PASS / FAIL for each.

Reads ``eval_comparisons`` (the paired patient-bootstrap differences the evaluation wrote) of a
storage root's ``catalog.duckdb``; computes nothing from a model. The claims (issue 13):

1. stage 2's findings features beat bag-of-codes at 0% masking: paired CI of the macro-AUROC
   difference above 0;
2. stage 2 minus stage 1 continued (equal steps), findings macro AUROC: paired CI above 0 at
   40% and at 60% image masking;
3. stage 2 inpainting PSNR (vs the VQ reconstruction, 40% random positions) >= 3 dB above stage
   1 continued, paired CI above 0;
4. stage 2 macro AUROC drops by no more than 0.10 from 0% to 60% masking.

One line per claim and stage-2 checkpoint; exit status 0 when every claim holds, 1 when one
does not, 2 when the catalog lacks what a claim needs (not evaluated yet).

    .venv/bin/python bench/demo_claims.py --storage storage [--json bench/results/demo-claims.json]

``--table`` also prints the README's demo table (headline numbers of ``eval_results`` per arm,
95% patient-bootstrap intervals in brackets).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.sort(key=lambda p: Path(p or ".").resolve() == Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl

from bench.common import repo_relative
from cxr.catalog import Catalog
from evaluation.comparisons import read_comparisons

#: claim 3's margin and claim 4's largest allowed drop
MIN_PSNR_GAIN_DB = 3.0
MAX_AUROC_DROP = 0.10


def _row(frame: pl.DataFrame, **where) -> dict | None:
    for name, value in where.items():
        frame = frame.filter(pl.col(name) == value)
    if frame.height > 1:
        raise ValueError(f"more than one comparison row for {where}")
    return frame.row(0, named=True) if frame.height else None


def _interval(row: dict) -> str:
    return f"{row['diff']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"


def check_claims(frame: pl.DataFrame) -> list[dict]:
    """One dict per (claim, stage-2 checkpoint): claim, checkpoint, holds (None: no data), text."""
    out: list[dict] = []
    stage2 = sorted(set(frame.filter(pl.col("arm_a") == "stage2")["checkpoint_a"].to_list()))
    if not stage2:
        return [{"claim": 0, "checkpoint": None, "holds": None, "text": "no stage-2 results"}]
    for key in stage2:

        def claim(number: int, holds: bool | None, text: str, key: str = key) -> None:
            out.append(dict(claim=number, checkpoint=key, holds=holds, text=text))

        mine = frame.filter(pl.col("checkpoint_a") == key)
        findings = mine.filter(pl.col("task") == "findings", pl.col("metric") == "macro_auroc")
        bag = findings.filter(pl.col("checkpoint_b") == "bag_of_codes")
        cont = findings.filter(pl.col("arm_b") == "stage1-continued")

        row = _row(bag, mask_ratio=0.0)
        if row is None or row["ci_low"] is None:
            claim(1, None, "no stage 2 vs bag-of-codes")
        else:
            claim(
                1,
                row["ci_low"] > 0,
                f"stage 2 - bag-of-codes at 0%: {_interval(row)} "
                f"({row['value_a']:.4f} vs {row['value_b']:.4f}, {row['n_patients']} patients)",
            )

        parts, each = [], []
        for ratio in (0.4, 0.6):
            row = _row(cont, mask_ratio=ratio)
            if row is None or row["ci_low"] is None:
                each.append(None)
                parts.append(f"{ratio:.0%}: missing")
            else:
                each.append(row["ci_low"] > 0)
                parts.append(f"{ratio:.0%}: {_interval(row)}")
        holds = None if None in each else all(each)
        claim(2, holds, "stage 2 - stage 1 continued, " + "; ".join(parts))

        inpaint = mine.filter(
            pl.col("task") == "inpainting",
            pl.col("metric") == "psnr_vs_reconstruction",
            pl.col("arm_b") == "stage1-continued",
        )
        row = _row(inpaint, mask_ratio=0.4, setting="random")
        if row is None or row["ci_low"] is None:
            claim(3, None, "no inpainting pair")
        else:
            claim(
                3,
                row["diff"] >= MIN_PSNR_GAIN_DB and row["ci_low"] > 0,
                f"inpainting PSNR vs reconstruction, 40% random, stage 2 - stage 1 "
                f"continued: {_interval(row)} dB ({row['value_a']:.2f} vs "
                f"{row['value_b']:.2f}; needs >= {MIN_PSNR_GAIN_DB} dB)",
            )

        at0, at60 = _row(bag, mask_ratio=0.0), _row(bag, mask_ratio=0.6)
        if at0 is None or at60 is None:
            claim(4, None, "no 0% / 60% AUROC")
        else:
            drop = at0["value_a"] - at60["value_a"]
            claim(
                4,
                drop <= MAX_AUROC_DROP,
                f"stage 2 macro AUROC {at0['value_a']:.4f} at 0% -> "
                f"{at60['value_a']:.4f} at 60%: drop {drop:+.4f} (allowed {MAX_AUROC_DROP})",
            )
    return out


ARMS = ("stage1", "stage1-continued", "stage2")
#: (row label, task, metric, mask ratio, setting, baseline methods)
_FINDINGS = ("findings", "macro_auroc")
_PSNR = ("inpainting", "psnr_vs_reconstruction")
_ACC = ("inpainting", "masked_token_accuracy")
_FINDINGS_BASE = ("bag_of_codes", "pixel_blocks")
_FILL, _NEAREST = ("image_blind_mode_fill",), ("nearest_train_report_codes",)
TABLE_ROWS = (
    ("findings macro AUROC @0%", *_FINDINGS, 0.0, None, _FINDINGS_BASE),
    ("findings macro AUROC @40%", *_FINDINGS, 0.4, None, _FINDINGS_BASE),
    ("findings macro AUROC @60%", *_FINDINGS, 0.6, None, _FINDINGS_BASE),
    ("inpainting PSNR vs VQ recon., 40% random", *_PSNR, 0.4, "random", _FILL),
    ("inpainting PSNR vs VQ recon., 40% block", *_PSNR, 0.4, "block", _FILL),
    ("masked-token accuracy, 40% random", *_ACC, 0.4, "random", _FILL),
    ("report ROUGE-L", "report_generation", "rouge_l", None, None, _NEAREST),
    ("report clinical F1 (micro)", "report_generation", "clinical_f1_micro", None, None, _NEAREST),
    ("retrieval i2t R@10", "retrieval", "i2t_recall@10", None, None, ("chance",)),
)


def _arm(checkpoint_id: str) -> str:
    for arm in ("stage1-continued", "stage2", "stage1"):
        if checkpoint_id.startswith(arm + "-"):
            return arm
    return "other"


def _cell(row: dict | None, digits: int) -> str:
    if row is None or row["value"] is None:
        return "-"
    text = f"{row['value']:.{digits}f}"
    if row["ci_low"] is not None and row["ci_high"] is not None:
        text += f" [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"
    return text


def results_table(results: pl.DataFrame) -> str:
    """Markdown: one row per headline measure, one column per arm, then the baselines."""
    results = results.with_columns(
        pl.col("checkpoint_id").map_elements(_arm, return_dtype=pl.String).alias("arm")
    )
    lines = [
        "| measure | stage 1 | stage 1 continued (equal steps) | stage 2 | baselines |",
        "|---|---|---|---|---|",
    ]
    for label, task, metric, ratio, setting, baselines in TABLE_ROWS:
        rows = results.filter(pl.col("task") == task, pl.col("metric") == metric)
        if ratio is not None:
            rows = rows.filter(pl.col("mask_ratio") == ratio)
        if setting is not None:
            rows = rows.filter(pl.col("setting") == setting)
        digits = 1 if "PSNR" in label else 3
        cells = []
        for arm in ARMS:
            mine = rows.filter(pl.col("arm") == arm, pl.col("method") == "model")
            cells.append(_cell(mine.row(0, named=True) if mine.height else None, digits))
        base = []
        for method in baselines:
            theirs = rows.filter(pl.col("method") == method)
            if theirs.height:
                base.append(f"{method} {_cell(theirs.row(0, named=True), digits)}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'; '.join(base) or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="storage", help="storage root with catalog.duckdb")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--table", action="store_true", help="print the README's demo table")
    args = parser.parse_args(argv)
    catalog_path = Path(args.storage) / "catalog.duckdb"
    if not catalog_path.exists():
        print(f"no catalog at {catalog_path}: run make demo first", file=sys.stderr)
        return 2
    results = check_claims(read_comparisons(Catalog(catalog_path)))
    for r in results:
        verdict = {True: "PASS", False: "FAIL", None: "MISSING"}[r["holds"]]
        print(f"claim {r['claim']} [{verdict}] {r['checkpoint']}: {r['text']}")
    if args.table:
        catalog = Catalog(catalog_path)
        with catalog.reader() as con:
            table = pl.from_arrow(con.sql("SELECT * FROM eval_results").to_arrow_table())
        print()
        print(results_table(table))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"catalog": repo_relative(catalog_path), "claims": results}, indent=1)
        )
    if any(r["holds"] is None for r in results):
        return 2
    return 0 if all(r["holds"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
