"""Failure drills: runs killed part-way, corrupt files, a full disk, an unwritable storage root.

Each drill breaks a real run on purpose, then checks what a READER sees: never a partial or
unlisted file presented as complete, an error that names the file and says what went wrong,
and, after a re-run, outputs byte-identical to an uninterrupted run.

The killed runs are real processes with local Ray, in their own session: ``dagster asset
materialize`` for ``cxr_images`` (Ray Data tasks), a Python process calling ``dg.materialize``
for ``token_shards`` (Ray Data actors). Their shard writes are slowed by a ``sitecustomize``
hook on the subprocess's PYTHONPATH, so the kill reliably lands while shards (and temporary
files) are being written. The re-runs and the reference run are in-process, without Ray: the
content of a shard set does not depend on how it was scheduled.
"""

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pyarrow.parquet as pq
import pytest
from pipeline_setup import local_resources, tiny_data_ops

from cxr.storage import StorageWriteError, atomic_path, file_sha256, leftover_temp_files
from cxr.synthetic import generate_archive
from pipelines.definitions import defs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SALT = "drill-salt-0123456789abcdef"
IMAGES_CONFIG = {"images_per_shard": 2, "image_size": 64}
RUN_CONFIG = {"ops": tiny_data_ops(**IMAGES_CONFIG)}
SHARDS = "shard-[0-9][0-9][0-9][0-9][0-9].parquet"  # what the catalog views read
WRITE_DELAY_S = 1.0
THROTTLE = '''"""Drill hook: sleep after a shard's temporary file is written (before the rename)."""
import os

if os.environ.get("CHEXMIX_DRILL_WRITE_DELAY_S"):
    import time

    import pyarrow.parquet as _pq

    _write_table = _pq.write_table
    _delay = float(os.environ["CHEXMIX_DRILL_WRITE_DELAY_S"])

    def write_table(table, where, *args, **kwargs):
        _write_table(table, where, *args, **kwargs)
        if ".shard-" in str(where) and ".tmp-" in str(where):
            time.sleep(_delay)

    _pq.write_table = write_table
'''


IN_PROCESS_RUN = """import json, sys
import dagster as dg
from pipelines.definitions import defs
definitions = defs()
result = dg.materialize(
    list(definitions.assets),
    resources=definitions.resources,
    selection=dg.AssetSelection.assets(sys.argv[1]).without_checks(),
    run_config=json.loads(sys.argv[2]),
)
sys.exit(0 if result.success else 1)
"""


def resources(archive: Path, storage: Path) -> dict:
    return local_resources(archive, storage, SALT)


def materialize(archive: Path, storage: Path, names: list[str] | None = None, **kwargs):
    """The data graph (or the named assets), in this process, without Ray and without checks."""
    definitions = defs()
    if names is None:
        selection = dg.AssetSelection.groups("ingest", "curation", "tokenization").without_checks()
        config = RUN_CONFIG
    else:
        selection = dg.AssetSelection.assets(*names).without_checks()
        config = {"ops": {k: v for k, v in RUN_CONFIG["ops"].items() if k in names}}
    return dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        resources=resources(archive, storage),
        selection=selection,
        run_config=config,
        **kwargs,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """A small archive and an uninterrupted run of the data graph on it."""
    archive = tmp_path_factory.mktemp("drill_archive")
    generate_archive(archive, num_studies=10, seed=21, size_scale=0.5)
    storage = tmp_path_factory.mktemp("drill_reference")
    assert materialize(archive, storage).success
    return archive, storage


def copy_storage(reference: Path, target: Path, *without: str) -> Path:
    """A copy of the reference storage root without some top-level outputs."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(folder) == reference and n in without]

    shutil.copytree(reference, target, ignore=ignore)
    return target


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.glob("shard-*.parquet"))}


def run_env(archive: Path, storage: Path) -> dict[str, str]:
    """Environment of a run in a subprocess: resources resolve from these variables."""
    return {
        **os.environ,
        "CHEXMIX_SOURCE_ROOT": str(archive),
        "CHEXMIX_STORAGE_ROOT": str(storage),
        "CHEXMIX_ID_SALT": SALT,
    }


def launch(
    select: str, config: dict, archive: Path, storage: Path, log: Path, delay_s: float, cli: bool
) -> subprocess.Popen:
    """A run in a new session (so it can be killed as a whole).

    ``cli``: ``dagster asset materialize`` (as ``make demo`` runs it: the steps run in a child
    process of the CLI); else a Python process calling ``dg.materialize`` in-process.
    """
    env = run_env(archive, storage)
    if delay_s:
        hook = log.parent / "drill_hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(THROTTLE)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
        env["CHEXMIX_DRILL_WRITE_DELAY_S"] = str(delay_s)
    if cli:
        command = [
            str(Path(sys.executable).with_name("dagster")),
            *("asset", "materialize", "-m", "pipelines.definitions", "--select", select),
            *("--config-json", json.dumps(config)),
        ]
    else:
        command = [sys.executable, "-c", IN_PROCESS_RUN, select, json.dumps(config)]
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_everything(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGKILL the run's process group AND every descendant; return what survived (none).

    Ray puts its workers in process groups of their own, so killing the group is not enough:
    every descendant found at the moment of the kill is killed by pid as well.
    """
    family: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    proc.wait(timeout=60)
    _, alive = psutil.wait_procs(family, timeout=30)
    survivors = []
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            if member.status() != psutil.STATUS_ZOMBIE:
                survivors.append(member)
    return survivors


def kill_part_way(proc: subprocess.Popen, out_dir: Path, log: Path, timeout_s: float = 240.0):
    """Wait for a first complete shard while no manifest exists, then kill the whole run."""
    manifest = out_dir / "_manifest.json"
    deadline = time.monotonic() + timeout_s
    try:
        while not list(out_dir.glob(SHARDS)) or manifest.exists():
            if proc.poll() is not None:
                tail = log.read_text()[-3000:]
                pytest.fail(f"the run ended (rc {proc.returncode}) before the kill:\n{tail}")
            if time.monotonic() > deadline:
                pytest.fail(f"no shard within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
    finally:
        survivors = kill_everything(proc)
    assert survivors == [], f"processes left behind by the killed run: {survivors}"
    assert not manifest.exists(), "the run finished its manifest before the kill landed"


def assert_identical(drilled: Path, clean: Path) -> None:
    """Same manifest bytes, same shard files (names and sha256), nothing else in the folder."""
    assert file_sha256(drilled / "_manifest.json") == file_sha256(clean / "_manifest.json")
    assert shard_hashes(drilled) == shard_hashes(clean)
    assert sorted(p.name for p in drilled.iterdir()) == sorted(p.name for p in clean.iterdir())
    assert leftover_temp_files(drilled) == []


def listed(folder: Path) -> list[str]:
    manifest = json.loads((folder / "_manifest.json").read_text())
    return sorted(s["path"] for s in manifest["shards"])


# ----------------------------------------------------------------------------------------------
# 1. kill -9 part-way through a shard set


def test_killed_image_decoding_resumes_to_identical_shards(reference, tmp_path):
    from cxr.images import verify_image_shards

    archive, clean = reference
    storage = copy_storage(clean, tmp_path / "storage", "images", "tokens")
    out_dir = storage / "images"
    config = {
        "ops": {
            "cxr_images": {"config": {"use_ray": True, **IMAGES_CONFIG}},
            "cxr_images_decode_success_rate": {"config": {"min_success_rate": 0.3}},
        }
    }
    log = tmp_path / "killed.log"
    run = launch("cxr_images", config, archive, storage, log, WRITE_DELAY_S, cli=True)
    kill_part_way(run, out_dir, log)

    # what a reader sees after the crash: an incomplete set, and only complete files
    with pytest.raises(FileNotFoundError, match="image shard set is incomplete"):
        verify_image_shards(out_dir)
    survivors = {p.name: p.stat().st_mtime_ns for p in out_dir.glob(SHARDS)}
    reference_hashes = shard_hashes(clean / "images")
    for name in survivors:  # a shard under its final name is whole: atomic rename
        assert file_sha256(out_dir / name) == reference_hashes[name], name
    temps = leftover_temp_files(out_dir)
    assert all(p.name.startswith(".") for p in temps)  # hidden, never matched by readers

    assert materialize(archive, storage, ["cxr_images"]).success  # the re-run
    assert_identical(out_dir, clean / "images")
    assert verify_image_shards(out_dir)["num_images"] > 0
    for name, mtime in survivors.items():  # finished shards were reused, not redone
        assert (out_dir / name).stat().st_mtime_ns == mtime, name


def test_killed_tokenization_resumes_to_identical_shards(reference, tmp_path):
    from cxr.token_shards import verify_shard_set
    from models.lm_data import shard_paths_from_manifest

    archive, clean = reference
    storage = copy_storage(clean, tmp_path / "storage", "tokens")
    out_dir = storage / "tokens"
    config = {"ops": {"token_shards": {"config": {"use_ray": True, "num_workers": 2}}}}
    log = tmp_path / "killed.log"
    run = launch("token_shards", config, archive, storage, log, WRITE_DELAY_S, cli=False)
    kill_part_way(run, out_dir, log)

    with pytest.raises(FileNotFoundError, match="token shard set is incomplete"):
        shard_paths_from_manifest(out_dir)
    reference_hashes = shard_hashes(clean / "tokens")
    survivors = {p.name: p.stat().st_mtime_ns for p in out_dir.glob(SHARDS)}
    for name in survivors:
        assert file_sha256(out_dir / name) == reference_hashes[name], name

    assert materialize(archive, storage, ["token_shards"]).success  # the re-run
    assert_identical(out_dir, clean / "tokens")
    for name, mtime in survivors.items():
        assert (out_dir / name).stat().st_mtime_ns == mtime, name
    assert verify_shard_set(out_dir)["content_hash"]
    paths = shard_paths_from_manifest(out_dir, verify=True)
    assert sorted(p.name for p in paths) == listed(out_dir) == sorted(reference_hashes)


def test_a_rewrite_killed_part_way_leaves_no_stale_manifest(reference, tmp_path):
    """A re-materialization with new pixel settings, crashed after one shard: the old manifest
    must not keep listing a mix of old and new files."""
    from cxr.images import verify_image_shards

    archive, clean = reference
    storage = copy_storage(clean, tmp_path / "storage", "tokens")
    out_dir = storage / "images"
    calls = {"n": 0}
    real = pq.write_table

    def crash_on_second_shard(table, where, *args, **kwargs):
        if ".shard-" in str(where) and ".tmp-" in str(where):
            calls["n"] += 1
            if calls["n"] == 3:  # sidecar + shard of the first task are done
                raise RuntimeError("simulated crash")
        return real(table, where, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pq, "write_table", crash_on_second_shard)
        patch.setitem(RUN_CONFIG["ops"]["cxr_images"]["config"], "image_size", 48)
        crashed = materialize(archive, storage, ["cxr_images"], raise_on_error=False)
    assert "simulated crash" in failure_message(crashed)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        verify_image_shards(out_dir)
    assert leftover_temp_files(out_dir) == []  # the atomic writer cleaned up after itself
    assert materialize(archive, storage, ["cxr_images"]).success  # original settings again
    assert_identical(out_dir, clean / "images")


# ----------------------------------------------------------------------------------------------
# 3. corrupt or missing files are named before use


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_or_missing_image_shard_is_named(reference, tmp_path):
    from cxr.images import verify_image_shards

    _, clean = reference
    images = shutil.copytree(clean / "images", tmp_path / "images")
    victim = sorted(images.glob(SHARDS))[1]
    flip_a_byte(victim)
    with pytest.raises(ValueError, match=f"image shard .*{re.escape(str(victim.name))} is corrupt"):
        verify_image_shards(images)
    sidecar = sorted(images.glob("shard-*.rejected.parquet"))[0]
    sidecar.unlink()
    shutil.copyfile(clean / "images" / victim.name, victim)
    with pytest.raises(
        FileNotFoundError, match=f"{re.escape(str(sidecar.name))} listed in the manifest is missing"
    ):
        verify_image_shards(images)
    (images / "_manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"_manifest\.json is unreadable"):
        verify_image_shards(images)


def test_the_image_shard_check_fails_on_a_corrupt_shard(reference, tmp_path):
    archive, clean = reference
    storage = copy_storage(clean, tmp_path / "storage", "tokens")
    victim = sorted((storage / "images").glob(SHARDS))[0]
    flip_a_byte(victim)
    definitions = defs()
    check = next(
        c for c in definitions.asset_checks if "image_shards_match_manifest" in str(c.check_keys)
    )
    result = dg.materialize(
        [*definitions.assets, check],
        resources=resources(archive, storage),
        selection=dg.AssetSelection.checks(check),
        raise_on_error=False,
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert f"{victim.name} is corrupt" in evaluation.metadata["error"].value


def test_a_corrupt_token_shard_is_named_before_training(reference, tmp_path):
    from models.lm_data import shard_paths_from_manifest

    _, clean = reference
    tokens = shutil.copytree(clean / "tokens", tmp_path / "tokens")
    victim = sorted(tokens.glob(SHARDS))[0]
    flip_a_byte(victim)
    assert len(shard_paths_from_manifest(tokens)) == len(listed(tokens))  # unverified: lists
    with pytest.raises(ValueError, match=f"token shard .*{re.escape(str(victim.name))} is corrupt"):
        shard_paths_from_manifest(tokens, verify=True)
    (tokens / "_manifest.json").write_text('{"shards": 3}')
    with pytest.raises(ValueError, match=r"_manifest\.json is unreadable"):
        shard_paths_from_manifest(tokens)


def test_a_published_checkpoint_with_a_missing_or_altered_file_is_named(tmp_path):
    from pipelines.checkpoints.publish import (
        publish_checkpoint,
        verified_from_pointer,
        verify_checkpoint,
    )

    trained = tmp_path / "run" / "step_000004"
    (trained / "model").mkdir(parents=True)
    (trained / "model" / "model.safetensors").write_bytes(os.urandom(4096))
    (trained / "training_state.pt").write_bytes(os.urandom(2048))
    (trained / "COMPLETE").write_text("")
    target = tmp_path / "checkpoints" / "stage1" / "step_000004-abc"
    publish_checkpoint(trained, target, {"stage": 1, "step": 4})
    pointer = tmp_path / "checkpoints" / "stage1" / "latest.json"
    pointer.write_text(json.dumps({"path": str(target)}))
    assert verified_from_pointer(pointer)[0] == target

    weights = target / "model" / "model.safetensors"
    flip_a_byte(weights)
    with pytest.raises(ValueError, match=f"checkpoint file {re.escape(str(weights))} is corrupt"):
        verified_from_pointer(pointer)
    weights.unlink()
    with pytest.raises(
        FileNotFoundError, match=f"{re.escape(str(weights))} listed in the manifest is missing"
    ):
        verify_checkpoint(target)
    manifest = json.loads((target / "checkpoint.json").read_text())
    manifest["files"].pop("model/model.safetensors")  # hiding a file is caught too
    (target / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"checkpoint\.json is inconsistent"):
        verify_checkpoint(target)
    (target / "checkpoint.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        verify_checkpoint(target)


# ----------------------------------------------------------------------------------------------
# 4. disk full, unwritable storage root


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def test_disk_full_while_writing_shards_publishes_nothing(reference, tmp_path):
    from cxr.images import verify_image_shards

    archive, clean = reference
    storage = copy_storage(clean, tmp_path / "storage", "images", "tokens")
    out_dir = storage / "images"
    calls = {"n": 0}
    real = pq.write_table

    def disk_fills_up(table, where, *args, **kwargs):
        if ".shard-" in str(where) and ".tmp-" in str(where):
            calls["n"] += 1
            if calls["n"] == 4:  # half of a shard reaches the disk, then it is full
                real(table, where, *args, **kwargs)
                Path(where).write_bytes(Path(where).read_bytes()[:100])
                raise OSError(errno.ENOSPC, "Error writing bytes to file (No space left)")
        return real(table, where, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pq, "write_table", disk_fills_up)
        result = materialize(archive, storage, ["cxr_images"], raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "StorageWriteError" in message or "could not write" in message
    assert f"could not write {out_dir}/shard-00001.parquet" in message
    assert "the file system is full (No space left on device)" in message
    assert not (out_dir / "_manifest.json").exists()
    assert leftover_temp_files(out_dir) == []
    with pytest.raises(FileNotFoundError, match="incomplete"):
        verify_image_shards(out_dir)
    reference_hashes = shard_hashes(clean / "images")
    for path in out_dir.glob(SHARDS):  # what does exist under a final name is whole
        assert file_sha256(path) == reference_hashes[path.name]

    # the manifest itself cannot be written: the set stays incomplete, nothing half-written
    real_write_bytes = Path.write_bytes

    def manifest_fails(self, data):
        if self.name.startswith("._manifest.json.tmp-"):
            real_write_bytes(self, data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_bytes(self, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "write_bytes", manifest_fails)
        result = materialize(archive, storage, ["cxr_images"], raise_on_error=False)
    assert f"could not write {out_dir}/_manifest.json" in failure_message(result)
    assert not (out_dir / "_manifest.json").exists() and leftover_temp_files(out_dir) == []

    assert materialize(archive, storage, ["cxr_images"]).success  # space is back
    assert_identical(out_dir, clean / "images")


def test_a_storage_write_error_names_the_file_and_the_cause(tmp_path):
    from cxr.storage import write_json

    target = tmp_path / "out" / "x.json"
    with pytest.MonkeyPatch.context() as patch:

        def full(self, data):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

        patch.setattr(Path, "write_bytes", full)
        expected = f"could not write {target}: the file system is full"
        with pytest.raises(StorageWriteError, match=re.escape(expected)) as info:
            write_json({"a": 1}, target)
    assert info.value.errno == errno.EDQUOT and info.value.path == str(target)
    assert list(target.parent.iterdir()) == []
    with pytest.raises(FileNotFoundError), atomic_path(target):  # a failed READ: not relabelled
        (tmp_path / "missing-input").read_bytes()


def read_only_run(archive: Path, storage: Path) -> str:
    """As root (who ignores permissions): run ``cxr_images`` in a private mount namespace where
    the storage root is bind-mounted read-only (EROFS); return the run's output."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, and no mount namespace for a read-only bind mount")
    root = shlex.quote(str(storage))
    mount = f"mount --bind {root} {root} && mount -o remount,ro,bind {root} {root}"
    config = {"ops": {"cxr_images": RUN_CONFIG["ops"]["cxr_images"]}}
    command = [
        *("unshare", "-m", "sh", "-c", f'{mount} && exec "$0" "$@"'),
        *(sys.executable, "-c", IN_PROCESS_RUN, "cxr_images", json.dumps(config)),
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        env=run_env(archive, storage),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0, done.stdout[-3000:]
    return done.stdout + done.stderr


def test_an_unwritable_storage_root_fails_fast_and_clearly(reference, tmp_path):
    """chmod a-w as a normal user; a read-only bind mount as root."""
    archive, clean = reference
    storage = copy_storage(clean, tmp_path / "storage", "images", "tokens")
    before = {p: p.stat().st_mtime_ns for p in storage.rglob("*")}
    if os.geteuid() == 0:
        message, reason = read_only_run(archive, storage), "Read-only file system"
    else:
        folders = [storage, *(p for p in storage.rglob("*") if p.is_dir())]
        for folder in folders:
            folder.chmod(0o555)
        try:
            result = materialize(archive, storage, ["cxr_images"], raise_on_error=False)
        finally:
            for folder in folders:
                folder.chmod(0o755)
        message, reason = failure_message(result), "Permission denied"
    images = storage / "images"
    assert f"could not write {images}: the storage location is not writable ({reason})" in message
    assert not images.exists()  # nothing half-written, no manifest
    assert {p: p.stat().st_mtime_ns for p in storage.rglob("*")} == before
