"""Measure the rule-based CheXpert labeler (cxr.labeler) against three references.

Usage::

    python bench/labeler_eval.py [--rules DIR] [--openi DIR] [--synthetic DIR]
                                 [--generate N] [--json PATH]

Prints three tables:

1. the 4 reference-labelled reports shipped with the CheXpert labeler rules
   (``sample_reports.csv`` / ``labeled_reports.csv``): exact match per report and per value;
2. the Open-i sample (``shared/data/openi_iu_reports/ecgen-radiology-sample300``): per-observation
   precision / recall / F1 of our labels on FINDINGS + IMPRESSION against silver labels from the
   curators' MeSH major codes (``cxr.label_eval.OPENI_MESH_MAP``); uncertain counts as positive;
3. with ``--synthetic DIR`` (an archive with ``ground_truth/labels.csv`` and
   ``files/pNN/p<subject>/s<study>.txt``), or ``--generate N`` (builds one in a temporary folder
   with ``cxr.synthetic.generate_archive`` when that exists): per-observation F1 against the
   generator's ground truth, positive class, plus 4-class exact-match accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr.label_eval import agreement, evaluate_openi, format_table
from cxr.labeler import DEFAULT_RULES_DIR, OBSERVATIONS, CheXpertLabeler
from cxr.reports import iter_openi_dir, parse_report, training_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COLUMNS = ("observation", "support", "tp", "fp", "fn", "precision", "recall", "f1")


def _value(cell: str) -> float | None:
    cell = (cell or "").strip()
    return float(cell) if cell else None


def reference_table(labeler: CheXpertLabeler, rules: Path) -> dict:
    """Table 1: the official labeler's 4 reference reports, exact match."""
    with (rules / "labeled_reports.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    report_rows, cells, matched = [], 0, 0
    for index, row in enumerate(rows, start=1):
        pred = labeler.label(row["Reports"])
        diffs = {
            obs: (pred[obs], _value(row[obs]))
            for obs in OBSERVATIONS
            if pred[obs] != _value(row[obs])
        }
        cells += len(OBSERVATIONS)
        matched += len(OBSERVATIONS) - len(diffs)
        report_rows.append(
            {"report": index, "exact": "yes" if not diffs else "no", "diffs (ours, ref)": diffs}
        )
    print(f"\n## 1. CheXpert reference reports ({rules / 'labeled_reports.csv'})")
    print(format_table(report_rows, ["report", "exact", "diffs (ours, ref)"]))
    exact = sum(r["exact"] == "yes" for r in report_rows)
    print(f"reports exact: {exact}/{len(rows)}; values: {matched}/{cells}")
    return {
        "reports_exact": exact,
        "reports": len(rows),
        "values_matched": matched,
        "values": cells,
    }


def openi_table(labeler: CheXpertLabeler, directory: Path) -> list[dict]:
    """Table 2: Open-i reports vs MeSH silver labels."""
    reports = list(iter_openi_dir(directory))
    rows, _, _ = evaluate_openi(reports, labeler)
    print(f"\n## 2. Open-i {len(reports)} reports vs MeSH major silver labels ({directory})")
    print("(FINDINGS + IMPRESSION; uncertain counted as positive; positive class only)")
    print(format_table(rows, COLUMNS))
    return rows


def _archive_pairs(root: Path) -> tuple[list[str], list[dict[str, float | None]]]:
    """(report texts, ground-truth labels) of a synthetic archive, in labels.csv order."""
    reports = {p.stem.lstrip("s"): p for p in (root / "files").rglob("s*.txt")}
    texts, truth = [], []
    with (root / "ground_truth" / "labels.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            study = str(row["study_id"]).strip()
            path = reports.get(study) or reports.get(study.zfill(8))
            if path is None:
                continue
            texts.append(path.read_text(encoding="utf-8"))
            truth.append({obs: _value(row.get(obs, "")) for obs in OBSERVATIONS})
    return texts, truth


def synthetic_table(labeler: CheXpertLabeler, root: Path) -> list[dict]:
    """Table 3: synthetic archive reports vs the generator's ground truth."""
    texts, truth = _archive_pairs(root)
    sources: dict[str, int] = {}
    preds = []
    start = time.perf_counter()
    for text in texts:
        body, source = training_text(parse_report(text))
        sources[source] = sources.get(source, 0) + 1
        preds.append(labeler.label(body))
    seconds = time.perf_counter() - start
    rows = agreement(preds, truth)
    print(f"\n## 3. Synthetic archive {root}: {len(texts)} reports vs ground truth")
    print(f"(text sources: {sources}; {len(texts) / max(seconds, 1e-9):.0f} reports/s)")
    print(format_table(rows, (*COLUMNS, "accuracy")))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Runs the three measurements and prints their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES_DIR)
    parser.add_argument(
        "--openi", type=Path, default=SHARED / "openi_iu_reports" / "ecgen-radiology-sample300"
    )
    parser.add_argument("--synthetic", type=Path, default=None, help="synthetic archive root")
    parser.add_argument(
        "--generate", type=int, default=0, help="generate an N-study archive (needs cxr.synthetic)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)

    labeler = CheXpertLabeler.from_rules_dir(args.rules)
    results: dict = {"reference": reference_table(labeler, args.rules)}
    if args.openi.is_dir():
        results["openi"] = openi_table(labeler, args.openi)
    else:
        print(f"\n## 2. Open-i: {args.openi} not found, skipped")
    synthetic = args.synthetic
    with tempfile.TemporaryDirectory(prefix="labeler-eval-") as tmp:
        if synthetic is None and args.generate:
            try:
                from cxr.synthetic import generate_archive
            except ImportError:
                print("\n## 3. cxr.synthetic.generate_archive is not available, skipped")
            else:
                synthetic = Path(tmp) / "archive"
                generate_archive(synthetic, num_studies=args.generate, seed=args.seed)
        if synthetic is not None:
            results["synthetic"] = synthetic_table(labeler, synthetic)
        elif not args.generate:
            print("\n## 3. Synthetic: no --synthetic DIR or --generate N given, skipped")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
