"""Recording lineage from assets.

Canonical content hashes per asset, and one catalog row per materialization (``cxr.lineage``).
"""

import json
from typing import Any

import dagster as dg

from assets import paths
from cxr.lineage import LineageRecord, record
from cxr.storage import combined_hash, file_sha256
from pipelines.resources import StorageResource


def content_hash_of(asset_key: str, storage: StorageResource) -> str:
    """The canonical content hash of an asset's current outputs (what a reader reads)."""
    if asset_key == "source_manifest":
        return file_sha256(storage.path(*paths.SOURCE_MANIFEST))
    if asset_key == "studies":
        return combined_hash(
            [
                file_sha256(storage.path(*p))
                for p in (paths.STUDIES, paths.STUDY_IMAGES, paths.STUDIES_REJECTED)
            ]
        )
    if asset_key in ("cxr_images", "token_shards"):
        folder = paths.IMAGES_DIR if asset_key == "cxr_images" else paths.TOKENS_DIR
        manifest = storage.path(*folder) / "_manifest.json"
        return json.loads(manifest.read_text())["content_hash"]
    if asset_key == "text_tokenizer":
        from models.text_tokenizer import tokenizer_sha256

        return tokenizer_sha256(storage.path(*paths.TEXT_TOKENIZER_DIR))
    if asset_key == "image_tokenizer":
        from models.vq_tokenizer import checkpoint_sha256

        return checkpoint_sha256(storage.path(*paths.IMAGE_TOKENIZER_DIR))
    if asset_key in paths.TRAINING_POINTERS:
        pointer = paths.TRAINING_POINTERS[asset_key]
        return json.loads(storage.path(*pointer).read_text())["content_hash"]
    single_file = {
        "ingest_quarantine": paths.QUARANTINE,
        "splits": paths.SPLITS,
        "report_sections": paths.REPORT_SECTIONS,
        "finding_labels": paths.FINDING_LABELS,
        "vocabulary": paths.VOCABULARY,
    }
    if asset_key in single_file:
        return file_sha256(storage.path(*single_file[asset_key]))
    raise KeyError(f"no content hash rule for asset {asset_key!r}")


def record_lineage(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    outputs: list[str],
    content_hash: str,
    inputs: list[str],
    config: dict[str, Any],
    input_hashes: dict[str, str] | None = None,
    asset_key: str | None = None,
) -> dict[str, Any]:
    """Write this materialization's lineage row; return metadata entries to attach.

    ``inputs`` are read at their current version; ``input_hashes`` names exact versions read
    (e.g. the one checkpoint an evaluation partition used). ``asset_key`` names the asset when
    the step materializes several (a multi-asset); by default, the context's one asset.
    """
    input_hashes = {
        **{name: content_hash_of(name, storage) for name in inputs},
        **(input_hashes or {}),
    }
    rec = LineageRecord(
        asset_key=asset_key or context.asset_key.to_user_string(),
        output_paths=[str(p) for p in outputs],
        content_hash=content_hash,
        inputs=input_hashes,
        config=config,
        run_id=context.run.run_id,
        partition_key=context.partition_key if context.has_partition_key else None,
    )
    record(storage.catalog(), rec)
    return {
        "code_version": rec.code_version,
        "config_hash": rec.config_hash,
        **{f"input/{name}": value[:16] for name, value in input_hashes.items()},
    }
