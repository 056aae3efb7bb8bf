"""`make demo` ends with the elapsed time of each asset step, read from the event log."""

import sys
import time

import dagster as dg

from pipelines.run_times import format_table, main, step_times


@dg.asset
def slow_one() -> int:
    time.sleep(0.2)
    return 1


@dg.asset(deps=[slow_one])
def quick_one() -> int:
    return 2


def test_step_times_of_runs_since_a_moment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    started = time.time() - 1
    with dg.DagsterInstance.get() as instance:
        assert dg.materialize([slow_one, quick_one], instance=instance).success
        rows = step_times(instance, started)
        assert step_times(instance, time.time() + 60) == []
    assert [(r.step, r.status) for r in rows] == [("slow_one", "SUCCESS"), ("quick_one", "SUCCESS")]
    assert rows[0].seconds is not None and rows[0].seconds >= 0.2
    table = format_table(rows, started)
    assert "slow_one" in table and "SUCCESS" in table and "longest step " in table
    assert main(["--since", str(started)]) == 0
    out = capsys.readouterr().out
    assert "Elapsed time per asset step:" in out and "quick_one" in out


def test_absl_logging_holds_the_real_stderr():
    """conftest imports absl first: its handler must never hold a pytest capture stream, which a
    Dagster run's dictConfig would close (the order-dependent failure of the test above)."""
    import absl.logging

    assert absl.logging.get_absl_handler().python_handler.stream is sys.__stderr__
