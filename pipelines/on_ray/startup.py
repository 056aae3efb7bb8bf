"""How this project starts Ray: one function, used by every asset, runner, script and benchmark.

``ensure_ray`` either joins the cluster at ``address`` (default ``$RAY_ADDRESS``) with token
auth, or starts a quiet single-node local Ray. Every setting lives here, so a promise about Ray
start-up (auth, address, logging, CPUs) holds everywhere:

- auth: ``pipelines.on_ray.auth.prepare_ray_auth`` (a cluster always uses token auth; the local
  Ray uses token auth unless ``RAY_AUTH_MODE`` is set explicitly, as the tests do);
- node address: the local Ray is asked for ``_node_ip_address="127.0.0.1"``, but Ray 2.60
  replaces a loopback address by the host's primary one (``resolve_ip_for_localhost``, as
  ``ray start`` does), and its GCS, raylet and workers listen on all interfaces (measured). So
  the local Ray is NOT loopback-only, which is why it uses token auth by default;
- quiet: no dashboard, no worker output forwarded to the driver, Ray's loggers at ERROR, no
  usage stats;
- CPUs of a local Ray: ``num_cpus`` (0 = every CPU of this machine), at least ``min_cpus`` (the
  workers a Ray Train fit needs, so it never waits for CPUs that do not exist).

A process that already has Ray initialized keeps it: the first caller decides. No Dagster here;
Ray is imported only inside the function.
"""

from __future__ import annotations

import logging
import os

LOOPBACK = "127.0.0.1"


def ensure_ray(
    address: str | None = None,
    *,
    num_cpus: int = 0,
    min_cpus: int = 1,
    namespace: str | None = None,
) -> bool:
    """Connect this process to Ray once: the cluster at ``address``, else a local Ray.

    Args:
        address: Ray address (``host:port``) of a cluster to join; ``None`` = ``$RAY_ADDRESS``;
            ``""`` (or an unset ``$RAY_ADDRESS``) = start a local single-node Ray.
        num_cpus: CPUs of a local Ray; 0 = ``os.cpu_count()``. Ignored for a cluster.
        min_cpus: A local Ray gets at least this many CPUs (e.g. the Ray Train workers).
        namespace: Ray namespace of this driver (None = Ray's anonymous one).

    Returns:
        True when this call started or joined Ray; False when Ray was already initialized.

    Raises:
        pipelines.on_ray.auth.RayAuthError: Joining a cluster without a usable token, or a
            ``RAY_AUTH_TOKEN_PATH`` that names no private, non-empty file.
    """
    import ray

    if ray.is_initialized():
        return False
    from pipelines.on_ray.auth import prepare_ray_auth

    address = os.environ.get("RAY_ADDRESS", "") if address is None else address
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    prepare_ray_auth(address)
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "namespace": namespace}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(
            num_cpus=max(num_cpus or os.cpu_count() or 1, min_cpus),
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            **quiet,
        )
    return True
