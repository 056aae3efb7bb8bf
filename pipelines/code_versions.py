"""Code versions that mean something: a hash of the project source each asset runs.

An asset's code version is the sha256 of the source of its own module plus every project module
it imports, transitively (imports inside functions count: assets defer their heavy imports into
their bodies). Third-party imports are ignored; their versions are pinned in
``constraints.txt``. Wiring that every asset imports (resources, paths, lineage records) is not
followed. Any edit of a file counts, comments included: a version may change without need, never
stay put when the code changed.

Computed once when the Definitions load, from the files alone: nothing is imported.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Top-level packages of the project: imports of anything else are third-party.
PROJECT_PACKAGES = ("assets", "cxr", "evaluation", "models", "pipelines")

#: Wiring that every asset imports (typed resources, storage paths, lineage records) but that
#: does not compute an asset's output: following it would tie every asset to every other one.
WIRING_MODULES = frozenset(
    {
        "assets.paths",
        "pipelines.definitions",
        "pipelines.jobs",
        "pipelines.lineage",
        "pipelines.partitions",
        "pipelines.resources",
        "pipelines.sensors",
    }
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _module_path(root: Path, module: str) -> Path | None:
    """The file of project module ``module`` under ``root`` (``None`` when it is no module)."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


_FROM_IMPORT = re.compile(r"^[ \t]*from[ \t]+([\w.]+)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n]*)", re.M)


def _imported_names(source: str) -> set[str]:
    """Dotted names imported anywhere in ``source``: ``from a import b`` gives ``a`` and ``a.b``.

    A line scan, not a parse (parsing every module costs ~0.3 s at each Definitions load); a
    stray match only widens a version. Relative imports are banned by the ruff config.
    """
    names: set[str] = set()
    for module, imported in _FROM_IMPORT.findall(source):
        names.add(module)
        for part in re.sub(r"#[^\n]*", "", imported).strip("()").split(","):
            if part.split():
                names.add(f"{module}.{part.split()[0]}")
    for imported in _IMPORT.findall(source):
        for part in re.sub(r"#.*", "", imported).split(","):
            if part.split():
                names.add(part.split()[0])
    return names


@dataclass
class SourceGraph:
    """Project modules, their import edges and source hashes, read lazily from ``root``.

    Args:
        root: The repository root (the folder holding the project packages).
        read: Reads a file's text; tests inject one to edit sources without touching disk.
    """

    root: Path = REPO_ROOT
    read: Callable[[Path], str] = field(default=lambda path: path.read_text(encoding="utf-8"))
    _parsed: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict, repr=False)

    def _parse(self, module: str) -> tuple[str, frozenset[str]]:
        """``(source sha256, project modules imported)`` of ``module``."""
        if module not in self._parsed:
            path = _module_path(self.root, module)
            if path is None:
                raise ValueError(f"{module!r} is not a module under {self.root}")
            source = self.read(path)
            imports: set[str] = set()
            for name in _imported_names(source):
                if name.split(".")[0] not in PROJECT_PACKAGES:
                    continue
                parts = name.split(".")
                # `import a.b.c` runs a/__init__, a/b/__init__ and a/b/c: every prefix that is a
                # module; `from a import name` where name is no module leaves just `a`.
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if _module_path(self.root, prefix) is not None:
                        imports.add(prefix)
            digest = hashlib.sha256(source.encode()).hexdigest()
            self._parsed[module] = (digest, frozenset(imports - {module}))
        return self._parsed[module]

    def dependencies(self, module: str) -> list[str]:
        """``module`` and every project module it imports, transitively, sorted.

        Wiring modules (:data:`WIRING_MODULES`) are neither followed nor counted.
        """
        seen = {module}
        todo = [module]
        while todo:
            for dep in self._parse(todo.pop())[1]:
                if dep not in seen and dep not in WIRING_MODULES:
                    seen.add(dep)
                    todo.append(dep)
        return sorted(seen)

    def version(self, module: str) -> str:
        """A 12-hex code version of ``module``: the hash of its dependencies' names and sources."""
        digest = hashlib.sha256()
        for dep in self.dependencies(module):
            digest.update(f"{dep}\0{self._parse(dep)[0]}\0".encode())
        return digest.hexdigest()[:12]


def with_code_versions(assets: list[Any], graph: SourceGraph | None = None) -> list[Any]:
    """``assets`` with each asset's ``code_version`` set from the module that defines it.

    The module is where the asset's compute function lives (``op.compute_fn``), so a factory
    (one asset skeleton, several assets) is versioned by the factory's module and what it imports.
    """
    import dagster as dg

    graph = graph or SourceGraph()
    out = []
    for asset in assets:
        if isinstance(asset, dg.AssetsDefinition):
            version = graph.version(_defining_module(asset))
            asset = asset.map_asset_specs(
                lambda spec, v=version: spec.replace_attributes(code_version=v)
            )
        out.append(asset)
    return out


def _defining_module(asset: Any) -> str:
    """Module of the function an ``AssetsDefinition`` runs."""
    fn = asset.op.compute_fn
    fn = getattr(fn, "decorated_fn", fn)
    return fn.__module__
