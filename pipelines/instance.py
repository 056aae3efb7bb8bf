"""The Dagster instance of command-line tools: ``$DAGSTER_HOME``, else the project's own.

``make`` exports ``DAGSTER_HOME=<project>/.dagster_home``; a command typed in a plain shell
(``chexmix evaluate list``, ``python -m pipelines.evaluate list``) gets the same default here
instead of failing with "DAGSTER_HOME is not set", so runs and partitions land in one place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

PACKAGE_PARENT = Path(__file__).resolve().parents[1]
DAGSTER_YAML = "telemetry:\n  enabled: false\n"


def project_root() -> Path:
    """The checkout this code runs from (editable install), else the current directory."""
    if (PACKAGE_PARENT / "pyproject.toml").is_file():
        return PACKAGE_PARENT
    return Path.cwd()


def ensure_dagster_home() -> Path:
    """``$DAGSTER_HOME``, defaulting to ``<project>/.dagster_home`` (exported for children).

    Creates the folder and a ``dagster.yaml`` with telemetry off when they are missing, as
    ``make`` does.

    Returns:
        The Dagster home folder.
    """
    home = Path(os.environ.get("DAGSTER_HOME") or project_root() / ".dagster_home").resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return home


def dagster_instance() -> dg.DagsterInstance:
    """The persistent instance of ``ensure_dagster_home()``."""
    import dagster as dg

    ensure_dagster_home()
    return dg.DagsterInstance.get()
