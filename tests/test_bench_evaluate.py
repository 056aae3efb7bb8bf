"""bench/evaluate.py on the debug preset, on CPU, without the packages a bare GPU machine lacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "evaluate.py"
#: Not installed on the GPU machine: the benchmark must run without them.
ABSENT_ON_GPU_MACHINE = (
    "polars",
    "duckdb",
    "dagster",
    "ray",
    "mlflow",
    "diffusers",
    "vector_quantize_pytorch",
)
#: Runs the script as ``python bench/evaluate.py`` would (bench/ first on sys.path), with the
#: packages above made unimportable (``None`` in ``sys.modules``).
LAUNCHER = """
import runpy, sys
for name in {absent!r}:
    sys.modules[name] = None
sys.path.insert(0, {bench!r})
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.timeout(120)
def test_debug_cpu_run_writes_throughputs_and_projection(tmp_path: Path) -> None:
    launcher = LAUNCHER.format(
        absent=ABSENT_ON_GPU_MACHINE, bench=str(SCRIPT.parent), script=str(SCRIPT)
    )
    args = [
        "--preset", "debug", "--device", "cpu", "--images", "6", "--feature-batch", "4",
        "--inpaint-batch", "4", "--gen-batch", "4", "--gen-tokens", "6",
        "--retrieval-images", "2", "--retrieval-reports", "6", "--report-batch", "4",
        "--threads", "1", "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", launcher, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs = list(tmp_path.glob("eval-debug-cpu-*.json"))
    assert len(outputs) == 1, sorted(p.name for p in tmp_path.iterdir())
    text = outputs[0].read_text()
    assert str(tmp_path) not in text and str(REPO_ROOT) not in text  # no machine paths
    payload = json.loads(text)

    assert payload["replaced_modules"] == ["polars", "duckdb"]
    assert payload["skipped"] == [] and payload["errors"] == {}
    results = payload["results"]
    assert results["kv_cache"]["kv_cache_used"], results["kv_cache"]
    assert results["kv_cache"]["config_use_cache"] is False  # only generate's use_cache=True
    features = results["features"]
    assert [r["mask_ratio"] for r in features["per_ratio"]] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert all(r["images_per_s"] > 0 for r in features["per_ratio"])
    assert results["inpainting"]["images_per_s"] > 0
    generation = results["generation"]
    assert generation["generated_tokens"] == 6 * 6
    assert generation["tokens_per_s"] > 0 and generation["reports_per_s"] > 0
    assert results["retrieval"]["pairs_per_s"] > 0
    assert results["retrieval"]["candidate_reports"] == 6
    assert results["load"]["load_s"] > 0 and results["load"]["loaded_dtype"] == "float32"
    assert payload["model"]["attn_implementation"] == "sdpa"
    assert payload["model"]["build_s"] > 0

    projection = payload["projection"]
    assert projection["complete"]
    assert projection["mimic_cxr_test_images"] == 5159
    assert projection["mimic_cxr_test_studies"] == 3269
    lines = projection["test_split"]
    for name in ("findings_test_features", "inpainting", "report_generation", "retrieval"):
        assert lines[name]["seconds"] > 0, name
    assert projection["train_features"]["findings_train_features"]["seconds"] > 0
    assert projection["model_loads_s"] > 0
    assert projection["total_s"] > projection["test_split_total_s"] > 0
    assert "Projection, MIMIC-CXR test split" in proc.stdout
