"""pyproject declares what the code imports, and nothing it does not use (issue 15 item 7)."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("assets", "cxr", "evaluation", "models", "pipelines")
SCANNED = (*PACKAGES, "bench", "scripts")

#: Declared without being imported, and why.
DECLARED_NOT_IMPORTED = {
    "dagster-webserver": "the UI behind `make ui`",
    "pandas": "mlflow and ray[data,train] need it at run time; pinned to the verified version",
    "pylibjpeg": "pydicom's decoder plugin framework for the three below",
    "pylibjpeg-libjpeg": "pydicom decoder plugin (JPEG, JPEG-LS)",
    "pylibjpeg-openjpeg": "pydicom decoder plugin (JPEG 2000)",
    "pylibjpeg-rle": "pydicom decoder plugin (RLE, faster than pydicom's own)",
    "pyjpegls": "pydicom JPEG-LS plugin (CharLS), the only JPEG-LS encoder (synthetic archive)",
}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_normalize(re.split(r"[\[=<>!~ ;]", d, maxsplit=1)[0]) for d in project["dependencies"]}


def _imported_distributions() -> list[set[str]]:
    """For each third-party module imported: the distributions that provide it."""
    top_levels: set[str] = set()
    for folder in SCANNED:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    top_levels.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    top_levels.add(node.module.split(".")[0])
    local = {*PACKAGES, "bench", "tests"}
    third_party = top_levels - local - set(sys.stdlib_module_names) - {"__future__"}
    mapping = packages_distributions()
    return [{_normalize(d) for d in mapping.get(module, [module])} for module in third_party]


def test_every_imported_distribution_is_declared():
    declared = _declared()
    missing = sorted(min(dists) for dists in _imported_distributions() if not dists & declared)
    assert missing == [], f"imported but not in pyproject dependencies: {missing}"


def test_every_declared_distribution_is_used():
    imported = set().union(*_imported_distributions())
    unused = _declared() - imported - set(DECLARED_NOT_IMPORTED)
    assert unused == set(), f"declared but never imported: {sorted(unused)}"
