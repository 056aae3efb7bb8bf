"""bench/demo_claims.py reads the four demo claims off eval_comparisons rows, and can fail."""

import polars as pl

from bench.demo_claims import check_claims, results_table


def _row(b, arm_b, task, metric, ratio, setting, a, vb, low):
    return {
        "checkpoint_a": "s2",
        "checkpoint_b": b,
        "arm_a": "stage2",
        "arm_b": arm_b,
        "task": task,
        "metric": metric,
        "observation": "",
        "mask_ratio": ratio,
        "setting": setting,
        "value_a": a,
        "value_b": vb,
        "diff": a - vb,
        "ci_low": low,
        "ci_high": a - vb + 0.05,
        "n_patients": 100,
    }


def _frame(auroc_60=0.70, cont_low_40=0.01, psnr_gain=4.0):
    bag, cont = ("bag_of_codes", "baseline"), ("s1c", "stage1-continued")
    findings, psnr = ("findings", "macro_auroc"), ("inpainting", "psnr_vs_reconstruction")
    return pl.DataFrame(
        [
            _row(*bag, *findings, 0.0, "layer 3", 0.75, 0.66, 0.03),
            _row(*bag, *findings, 0.6, "layer 3", auroc_60, 0.6, 0.02),
            _row(*cont, *findings, 0.4, "", 0.72, 0.68, cont_low_40),
            _row(*cont, *findings, 0.6, "", auroc_60, 0.65, 0.01),
            _row(*cont, *psnr, 0.4, "random", 20.0 + psnr_gain, 20.0, 1.0),
            _row(*cont, *psnr, 0.4, "block", 18.0, 18.0, -0.5),
        ]
    )


def _verdicts(frame):
    return {r["claim"]: r["holds"] for r in check_claims(frame)}


def test_every_claim_holds_on_separating_rows():
    assert _verdicts(_frame()) == {1: True, 2: True, 3: True, 4: True}


def test_each_claim_fails_on_its_own_numbers():
    assert _verdicts(_frame(auroc_60=0.60))[4] is False  # drop 0.15 > 0.10
    assert _verdicts(_frame(cont_low_40=-0.01))[2] is False
    assert _verdicts(_frame(psnr_gain=2.0))[3] is False  # CI above 0 but under 3 dB
    missing = _frame().filter(pl.col("task") != "inpainting")
    assert _verdicts(missing)[3] is None
    assert check_claims(_frame().head(0))[0]["holds"] is None


def test_the_readme_table_puts_each_arm_in_its_column():
    def result(checkpoint, method, value):
        return {
            "checkpoint_id": checkpoint,
            "task": "findings",
            "method": method,
            "metric": "macro_auroc",
            "mask_ratio": 0.0,
            "setting": "",
            "value": value,
            "ci_low": value - 0.01,
            "ci_high": value + 0.01,
        }

    table = results_table(
        pl.DataFrame(
            [
                result("stage1-step_000300-r", "model", 0.61),
                result("stage1-continued-step_000300-r", "model", 0.62),
                result("stage2-step_000300-r", "model", 0.63),
                result("stage2-step_000300-r", "bag_of_codes", 0.55),
            ]
        )
    )
    row = next(line for line in table.splitlines() if "AUROC @0%" in line)
    assert row.split(" | ")[1:4] == [
        "0.610 [0.600, 0.620]",
        "0.620 [0.610, 0.630]",
        "0.630 [0.620, 0.640]",
    ]
    assert "bag_of_codes 0.550" in row
