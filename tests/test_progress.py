"""Progress lines at a sane rate, and a worker's progress carried back to the caller."""

import json
import threading

from cxr.progress import Progress, ProgressLog, format_duration, tailing


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_rate_limited_with_first_and_last_always_shown():
    clock, lines = FakeClock(), []
    progress = Progress("stage1 training", 100, lines.append, every_s=15, clock=clock)
    for step in range(1, 101):
        clock.now += 1.0  # one step a second
        progress.update(step, loss=3.0 - step / 100, tokens_per_s=1234.0, lr=3e-4)
    # step 1, then one line per 15 s, and the last step
    assert len(lines) == 1 + 99 // 15 + 1 == progress.lines
    assert lines[0].startswith("stage1 training: step 1/100 (1%) loss 2.9900 1,234 tok/s")
    assert "lr 0.0003" in lines[0]
    assert lines[-1].startswith("stage1 training: step 100/100 (100%) loss 2.0000")
    assert "ETA" not in lines[-1] and "elapsed 1m40s" in lines[-1]


def test_eta_comes_from_the_rate_since_the_first_update():
    clock, lines = FakeClock(), []
    progress = Progress("vq", 200, lines.append, every_s=0, clock=clock)
    clock.now += 60  # start-up (imports, Ray) is not work
    progress.update(10)
    clock.now += 10
    line = progress.update(20)  # 1 step/s -> 180 steps left
    assert line is not None and line.endswith("elapsed 1m10s ETA 3m00s")


def test_unknown_total_and_units():
    lines = []
    progress = Progress("token shards", None, lines.append, unit="shard", clock=FakeClock())
    progress.update(3, images=120)
    assert lines == ["token shards: shard 3 images 120 elapsed 0s"]


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.4, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


def test_progress_log_reads_only_complete_new_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    writer, reader = ProgressLog(path), ProgressLog(path)
    assert reader.read_new() == []  # no file yet
    writer.append({"step": 1, "loss": 2.5})
    with path.open("a") as f:
        f.write('{"step": 2')  # a line being written
    assert reader.read_new() == [{"step": 1, "loss": 2.5}]
    with path.open("a") as f:
        f.write(', "loss": 2.0}\n')
    assert reader.read_new() == [{"step": 2, "loss": 2.0}]
    assert reader.read_new() == []


def test_progress_log_never_raises(tmp_path):
    ProgressLog(tmp_path / "missing" / "p.jsonl").append({"step": 1})  # no folder: logged only


def test_tailing_delivers_records_while_the_block_runs_and_the_rest_at_the_end(tmp_path):
    path = tmp_path / "progress.jsonl"
    seen, first_seen = [], threading.Event()

    def on_record(record):
        seen.append(record["step"])
        first_seen.set()

    with tailing(path, on_record, poll_s=0.01):
        with path.open("a") as f:
            f.write(json.dumps({"step": 1}) + "\n")
        assert first_seen.wait(5)  # seen before the work ended
        with path.open("a") as f:
            f.write(json.dumps({"step": 2}) + "\n")
    assert seen == [1, 2]


def test_a_failing_callback_does_not_stop_the_work(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"step": 1}\n')

    def boom(record):
        raise RuntimeError("bad callback")

    with tailing(path, boom, poll_s=0.01):
        pass


def test_pass_progress_lines_per_pass_at_most_every_interval():
    from cxr.progress import PassProgress

    clock, lines = FakeClock(), []
    sink = PassProgress("findings evaluation of ckpt", lines.append, every_s=20, clock=clock)
    for total in (100, 100, 40):  # three passes (the second has the same total)
        for done in range(10, total + 1, 10):
            clock.now += 3
            sink(done, total)
    assert sink.passes == 3
    assert len(lines) == (3 * (10 + 10 + 4)) // 20 == 3
    assert lines[0] == (
        "findings evaluation of ckpt: pass 1, 70/100 rows (70%), elapsed 21s, pass ETA 9s"
    )


def test_evaluation_batches_report_to_the_sink_only_inside_the_block():
    from evaluation.data import batch_progress, batches

    seen = []
    with batch_progress(lambda done, total: seen.append((done, total))):
        assert [s.stop for s in batches(5, 2)] == [2, 4, 5]
    assert seen == [(2, 5), (4, 5), (5, 5)]
    list(batches(5, 2))
    assert len(seen) == 3
