"""Asset code versions follow the project source each asset runs (issue 15 item 4)."""

import re
from pathlib import Path

import pytest

from pipelines.code_versions import REPO_ROOT, SourceGraph, with_code_versions

ASSET_MODULES = sorted(
    f"assets.{p.stem}"
    for p in (REPO_ROOT / "assets").glob("*.py")
    if p.stem not in ("__init__", "paths", "checks")
)


def _versions_after_editing(relative_path: str) -> dict[str, tuple[str, str]]:
    """(before, after) version of every asset module when ``relative_path`` gains a line."""
    edited = REPO_ROOT / relative_path

    def read(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        return text + "\nEDITED = True\n" if path == edited else text

    before, after = SourceGraph(), SourceGraph(read=read)
    return {m: (before.version(m), after.version(m)) for m in ASSET_MODULES}


def _changed(relative_path: str) -> set[str]:
    versions = _versions_after_editing(relative_path)
    return {m.removeprefix("assets.") for m, (a, b) in versions.items() if a != b}


def test_editing_the_vq_trainer_changes_only_assets_that_run_it():
    changed = _changed("models/vq_train.py")
    assert "image_tokenizer" in changed
    assert not changed & {"source_manifest", "studies", "cxr_images", "splits", "token_shards"}
    assert not changed & {"text_tokenizer", "vocabulary", "stage_checkpoints", "leaderboard"}


def test_editing_the_pixel_chain_changes_the_ingest_assets_not_training():
    changed = _changed("cxr/pixels.py")
    assert {"source_manifest", "studies", "cxr_images"} <= changed
    assert not changed & {"text_tokenizer", "vocabulary", "splits", "stage_checkpoints"}


def test_editing_the_training_loop_changes_the_training_arms():
    changed = _changed("models/lm_train.py")
    assert "stage_checkpoints" in changed
    assert not changed & {"source_manifest", "cxr_images", "token_shards", "image_tokenizer"}


@pytest.mark.parametrize("path", ["models/vq_train.py", "cxr/pixels.py", "evaluation/stats.py"])
def test_exactly_the_assets_whose_imports_reach_the_module_change(path):
    module = path.removesuffix(".py").replace("/", ".")
    graph = SourceGraph()
    users = {m.removeprefix("assets.") for m in ASSET_MODULES if module in graph.dependencies(m)}
    assert users, f"no asset uses {module}?"
    assert _changed(path) == users


def test_wiring_does_not_tie_every_asset_together():
    assert _changed("pipelines/resources.py") == set()
    assert _changed("assets/paths.py") == set()


def test_a_copied_tree_edited_on_disk(tmp_path):
    files = {
        "cxr/__init__.py": "",
        "cxr/core.py": "from cxr.helpers import (\n    helper,  # used\n)\n",
        "cxr/helpers.py": "def helper():\n    return 1\n",
        "cxr/other.py": "import numpy as np\n",
        "models/__init__.py": "",
        "models/net.py": "import cxr.other\n",
        "assets/__init__.py": "",
        "assets/a.py": "def body():\n    from cxr.core import helper\n",  # deferred import
        "assets/b.py": "import models.net as net\n",
        "assets/c.py": "from cxr import other  # comment\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules = ["assets.a", "assets.b", "assets.c"]
    before = {m: SourceGraph(root=tmp_path).version(m) for m in modules}
    assert SourceGraph(root=tmp_path).dependencies("assets.a") == [
        "assets.a",
        "cxr",
        "cxr.core",
        "cxr.helpers",
    ]

    (tmp_path / "cxr/helpers.py").write_text("def helper():\n    return 2\n")
    after = {m: SourceGraph(root=tmp_path).version(m) for m in modules}
    assert [m for m in modules if before[m] != after[m]] == ["assets.a"]

    (tmp_path / "cxr/other.py").write_text("import numpy as np\nX = 1\n")
    again = {m: SourceGraph(root=tmp_path).version(m) for m in modules}
    assert [m for m in modules if after[m] != again[m]] == ["assets.b", "assets.c"]


def test_definitions_carry_the_derived_versions():
    from pipelines.definitions import defs

    graph = defs().get_repository_def().asset_graph
    versions = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}
    assert all(v and re.fullmatch(r"[0-9a-f]{12}", v) for v in versions.values()), versions
    assert versions["stage1_checkpoint"] == versions["stage2_checkpoint"]  # one module
    assert versions["source_manifest"] != versions["image_tokenizer"]
    assert versions["image_tokenizer"] == SourceGraph().version("assets.image_tokenizer")


def test_non_asset_definitions_pass_through():
    sentinel = object()
    assert with_code_versions([sentinel]) == [sentinel]
