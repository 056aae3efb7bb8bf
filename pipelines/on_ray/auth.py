"""Ray token authentication: who may run code on a Ray cluster the project starts or joins.

With ``RAY_AUTH_MODE=disabled`` anyone who reaches a Ray node's ports can run arbitrary code
on it, next to the patient data. So:

- every Ray CLUSTER (``ray start`` nodes, ``scripts/ray_cluster.py``, ``make cluster-demo``, and
  any ``RAY_ADDRESS`` a driver joins) runs with ``RAY_AUTH_MODE=token``. The token is a secret:
  ``RAY_AUTH_TOKEN`` (the value) or ``RAY_AUTH_TOKEN_PATH`` (a file), the same on every node
  and every driver; when neither is set, ``cluster_auth_env`` generates one into a 0600 file
  in the cluster's state folder. It is never written to the repository or a log;
- the single-node LOCAL Ray a driver starts for itself uses token auth too, by default: even
  with ``_node_ip_address="127.0.0.1"``, Ray 2.60's GCS, raylet and workers listen on all
  interfaces (measured), and token auth costs no measurable start-up time (README). Its token
  is ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` when set, else ``<DAGSTER_HOME>/ray_auth_token``
  (generated, 0600). An explicit ``RAY_AUTH_MODE`` (the tests' ``disabled``) is respected.

No Dagster here; Ray is imported only inside functions.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
TOKEN_FILE_NAME = "auth_token"
RAY_DEFAULT_TOKEN = Path("~/.ray/auth_token")
"""Where Ray itself looks for a token when neither variable is set."""


class RayAuthError(RuntimeError):
    """A Ray cluster is to be joined or started without a usable token."""


def write_token_file(path: Path) -> Path:
    """Create ``path`` with a new random 256-bit token, mode 0600, if it does not exist yet.

    The token is written to a private temporary file and linked into place, so a concurrent
    reader never sees an empty file and two concurrent writers agree on one token.

    Returns:
        ``path``.
    """
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(secrets.token_hex(32))
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: use its token
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def local_token_path() -> Path:
    """Where the local Ray's generated token lives: ``<DAGSTER_HOME>/ray_auth_token``."""
    from pipelines.instance import project_root

    home = os.environ.get("DAGSTER_HOME") or str(project_root() / ".dagster_home")
    return Path(home) / "ray_auth_token"


def _check_token_file(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise RayAuthError(
            f"{TOKEN_PATH}={path} does not name a file; point it at the cluster's token file"
        )
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise RayAuthError(
            f"the Ray token file {path} is readable by other users; run `chmod 600 {path}`"
        )
    if not path.read_text().strip():
        raise RayAuthError(f"the Ray token file {path} is empty")
    return path


def cluster_auth_env(state_dir: Path) -> dict[str, str]:
    """Environment for the nodes (and drivers) of a cluster the project starts.

    The token comes from ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` when set; otherwise it
    is generated once into ``<state_dir>/auth_token`` (0600) and reused by later starts.

    Returns:
        ``RAY_AUTH_MODE=token`` plus the one token variable to pass on.

    Raises:
        RayAuthError: ``RAY_AUTH_TOKEN_PATH`` names no file, an empty one, or one that other
            users can read.
    """
    if os.environ.get(TOKEN):
        return {AUTH_MODE: "token", TOKEN: os.environ[TOKEN]}
    if os.environ.get(TOKEN_PATH):
        return {AUTH_MODE: "token", TOKEN_PATH: str(_check_token_file(os.environ[TOKEN_PATH]))}
    path = write_token_file(Path(state_dir) / TOKEN_FILE_NAME)
    return {AUTH_MODE: "token", TOKEN_PATH: str(_check_token_file(path))}


def _refresh_ray_config() -> None:
    """Make Ray re-read ``RAY_AUTH_MODE`` and the token (it caches both per process)."""
    with contextlib.suppress(ImportError, AttributeError):
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def prepare_ray_auth(address: str) -> None:
    """Set this process up to ``ray.init`` at ``address`` ('' = a local single-node Ray).

    A cluster address always means token auth: ``RAY_AUTH_MODE`` is set to ``token`` (an
    inherited ``disabled`` is overridden) and a token must be available. A local Ray gets
    ``RAY_AUTH_MODE=token`` with the token of the environment or ``local_token_path()``
    (generated when absent), unless ``RAY_AUTH_MODE`` is already set.

    Raises:
        RayAuthError: Joining a cluster, but no token is set and Ray's default token file
            (``~/.ray/auth_token``) does not exist; or the token file is missing, empty or
            readable by other users.
    """
    has_token = bool(os.environ.get(TOKEN) or os.environ.get(TOKEN_PATH))
    if address:
        if not has_token and not RAY_DEFAULT_TOKEN.expanduser().is_file():
            raise RayAuthError(
                f"the Ray cluster at {address} requires token authentication, but no token is "
                f"set: export {TOKEN_PATH}=<the cluster's token file> (or {TOKEN}=<token>); "
                "`make cluster-demo` / scripts/ray_cluster.py print theirs at start"
            )
        os.environ[AUTH_MODE] = "token"
    else:
        os.environ.setdefault(AUTH_MODE, "token")
        if os.environ[AUTH_MODE] == "token" and not has_token:  # never Ray's ~/.ray default
            os.environ[TOKEN_PATH] = str(write_token_file(local_token_path()))
    if os.environ.get(AUTH_MODE) == "token" and os.environ.get(TOKEN_PATH):
        _check_token_file(Path(os.environ[TOKEN_PATH]))
    _refresh_ray_config()
