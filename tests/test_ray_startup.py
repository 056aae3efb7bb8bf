"""Ray start-up (``pipelines.on_ray.startup.ensure_ray``): the one way the project starts Ray."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

LOCAL_RAY = """
import os, ray
from pipelines.on_ray.auth import RayAuthError
from pipelines.on_ray.startup import ensure_ray
from pipelines.resources import RayResource

try:
    ensure_ray("10.0.0.5:6379")  # a cluster, but no token: refused before Ray is contacted
except RayAuthError:
    print("refused", ray.is_initialized())
assert ensure_ray(num_cpus=1, min_cpus=2)  # no RAY_ADDRESS: a local Ray
assert not ensure_ray(num_cpus=8)  # already up: kept as it is
RayResource(num_cpus=8).ensure_started()  # the Dagster resource goes through the same function

@ray.remote
def square(x):
    print("WORKER-OUTPUT")  # log_to_driver=False: never reaches the driver's terminal
    return x * x

print(os.environ["RAY_AUTH_MODE"], int(ray.cluster_resources()["CPU"]), ray.get(square.remote(7)))
ray.shutdown()
"""


def test_a_local_ray_is_quiet_with_token_auth_and_the_cpus_asked(tmp_path):
    """The production default, end to end (the suite itself runs its local Rays disabled)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.pop("RAY_ADDRESS", None)
    env.update(
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        HOME=str(tmp_path / "home"),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, "-c", LOCAL_RAY], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # the refused join started nothing; token auth (Ray 2.60 listens on all interfaces even
    # when asked for 127.0.0.1); min_cpus beat num_cpus=1; a task ran
    assert done.stdout.split() == ["refused", "False", "token", "2", "49"]
    assert "WORKER-OUTPUT" not in done.stdout + done.stderr
    assert (tmp_path / "dagster_home" / "ray_auth_token").is_file()
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()


#: Where ``ray.init`` may be called directly: the helper, and the test driver that must reach a
#: cluster WITHOUT the project's auth set-up to show that the cluster refuses it.
RAY_INIT_ALLOWED = {"pipelines/on_ray/startup.py", "tests/test_ray_cluster.py"}


def test_nothing_else_starts_ray_itself():
    callers = {
        path.relative_to(REPO_ROOT).as_posix()
        for folder in ("assets", "bench", "cxr", "evaluation", "models", "pipelines", "scripts")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if re.search(r"\bray\.init\(", path.read_text())
    }
    callers |= {
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "tests").glob("*.py")
        if path.name != Path(__file__).name and re.search(r"\bray\.init\(", path.read_text())
    }
    assert callers <= RAY_INIT_ALLOWED, (
        f"call pipelines.on_ray.startup.ensure_ray instead: {callers}"
    )
    assert "pipelines/on_ray/startup.py" in callers
