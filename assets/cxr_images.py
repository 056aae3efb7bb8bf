"""``cxr_images``: every usable image decoded to a model-ready uint8 array, in Parquet shards.

The same step materializes ``ingest_quarantine`` right after decoding: blocking checks run
after the step, so the table of why files were set aside exists even when
``decode_success_rate`` then stops the run (an archive of mostly non-chest images, say).
"""

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pyarrow.parquet as pq

from assets import paths
from assets.ingest_quarantine import INGEST_QUARANTINE, materialize_ingest_quarantine
from cxr.images import (
    ShardTask,
    finalize_shards,
    invalidate_manifest,
    pixel_config_hash,
    plan_shards,
    process_shard,
)
from cxr.pixels import PixelConfig
from cxr.previews import image_grid_png, markdown_image, markdown_table
from cxr.storage import ensure_writable_dir
from pipelines.lineage import record_lineage
from pipelines.resources import RayResource, SourceResource, StorageResource


class CxrImagesConfig(dg.Config):
    """Pixel chain and parallelism of image decoding."""

    image_size: int = 256
    """Output side in pixels (square). CheXmix uses 512; the CPU demo tokenizer uses 128."""
    fit: str = "crop"
    """'crop': shortest side to image_size, centre crop (CheXmix). 'pad': longest side + pad."""
    percentile_clip: list[float] = []
    """Optional [low, high] percentiles clipped after VOI/inversion for DICOMs (e.g. [1, 99])."""
    raster_percentile_clip: list[float] = [1.0, 99.0]
    """Percentile window for PNG/JPEG inputs (CheXmix windows PNGs at the 1st-99th)."""
    allowed_modalities: list[str] = ["CR", "DX"]
    """DICOM modalities accepted as chest radiographs; [] accepts all."""
    allowed_body_parts: list[str] = ["CHEST", "THORAX", ""]
    """BodyPartExamined values accepted ('' = missing); [] accepts all."""
    min_side: int = 64
    max_side: int = 8192
    max_aspect: float = 4.0
    images_per_shard: int = 128
    """Images per Parquet shard: the unit of parallel work and of memory per worker."""
    use_ray: bool = True
    """Decode shards with Ray Data (local Ray, or $RAY_ADDRESS); False runs them in-process."""

    def pixel_config(self) -> PixelConfig:
        """The core's pixel configuration (validated there)."""
        return PixelConfig(
            image_size=self.image_size,
            fit=self.fit,  # type: ignore[arg-type]
            percentile_clip=tuple(self.percentile_clip) if self.percentile_clip else None,
            raster_percentile_clip=(
                tuple(self.raster_percentile_clip) if self.raster_percentile_clip else None
            ),
            min_side=self.min_side,
            max_side=self.max_side,
            max_aspect=self.max_aspect,
            allowed_modalities=tuple(self.allowed_modalities),
            allowed_body_parts=tuple(self.allowed_body_parts),
        )


def run_shards(
    tasks: list[ShardTask],
    source_root: Path,
    plan_path: Path,
    out_dir: Path,
    pixel_config: PixelConfig,
    ray_resource: RayResource | None,
) -> list[dict[str, Any]]:
    """Process every shard task, with Ray Data when ``ray_resource`` is given."""
    if ray_resource is None or not tasks:
        return [process_shard(t, source_root, plan_path, out_dir, pixel_config) for t in tasks]
    import ray.data

    ray_resource.ensure_started()

    def work(row: dict[str, Any]) -> dict[str, Any]:
        return process_shard(ShardTask(**row), source_root, plan_path, out_dir, pixel_config)

    dataset = ray.data.from_items([dataclasses.asdict(t) for t in tasks])
    return dataset.map(work, num_cpus=1).take_all()


CXR_IMAGES = dg.AssetSpec(
    "cxr_images",
    group_name="ingest",
    deps=["studies"],
    kinds={"parquet", "ray"},
    description="Decoded, normalised uint8 images (decode -> modality LUT -> VOI -> MONOCHROME1 "
    "inversion -> optional percentile clip -> resize + centre crop) as zstd Parquet shards, "
    "with transfer syntax, decoder plugin, original size and photometric per image.",
)


@dg.multi_asset(specs=[CXR_IMAGES, INGEST_QUARANTINE], can_subset=True, name="cxr_images")
def cxr_images(
    context: dg.AssetExecutionContext,
    config: CxrImagesConfig,
    source: SourceResource,
    storage: StorageResource,
    ray: RayResource,
) -> Iterator[dg.MaterializeResult]:
    """Decode the study images, then union every stage's rejects into the quarantine."""
    selected = {key.to_user_string() for key in context.selected_asset_keys}
    if "cxr_images" in selected:
        yield decode_images(context, config, source, storage, ray)
        if "ingest_quarantine" not in selected:
            context.log.warning(
                "ingest_quarantine was not selected: its table still describes the previous run"
            )
    if "ingest_quarantine" in selected:
        yield materialize_ingest_quarantine(context, storage)


def decode_images(
    context: dg.AssetExecutionContext,
    config: CxrImagesConfig,
    source: SourceResource,
    storage: StorageResource,
    ray: RayResource,
) -> dg.MaterializeResult:
    """Decode the study images into ``images/shard-NNNNN.parquet``."""
    pixel_config = config.pixel_config()
    out_dir = ensure_writable_dir(storage.path(*paths.IMAGES_DIR))  # fail fast, before work
    plan_path = storage.path(*paths.IMAGES_PLAN)
    config_hash = pixel_config_hash(pixel_config)
    tasks = plan_shards(
        storage.path(*paths.STUDY_IMAGES),
        storage.path(*paths.SOURCE_MANIFEST),
        storage.path(*paths.SOURCE_LOCATIONS),
        plan_path,
        config.images_per_shard,
        config_hash,
    )
    if invalidate_manifest(out_dir, tasks):
        context.log.info(
            "shards will change: the old _manifest.json is removed until this run ends"
        )
    summaries = run_shards(
        tasks,
        source.spec().root,
        plan_path,
        out_dir,
        pixel_config,
        ray if config.use_ray else None,
    )
    content_hash = finalize_shards(
        out_dir,
        summaries,
        {"pixel_config": dataclasses.asdict(pixel_config), "pixel_config_hash": config_hash},
    )
    num_images = sum(s["num_images"] for s in summaries)
    num_rejected = sum(s["num_rejected"] for s in summaries)
    num_reused = sum(1 for s in summaries if s["reused"])
    context.log.info(
        f"{num_images} images decoded, {num_rejected} rejected, "
        f"{len(summaries)} shards ({num_reused} unchanged and reused)"
    )
    glob = str(out_dir / "shard-[0-9][0-9][0-9][0-9][0-9].parquet")
    storage.catalog().register_views({"cxr_images": glob})
    lineage = record_lineage(
        context,
        storage,
        [str(out_dir / "_manifest.json"), glob],
        content_hash,
        inputs=["studies"],
        config=config.model_dump(),
        asset_key="cxr_images",
    )
    metadata: dict[str, Any] = {
        "num_images": num_images,
        "num_rejected": num_rejected,
        "num_shards": len(summaries),
        "num_shards_reused": num_reused,
        "image_size": config.image_size,
        "pixel_config_hash": config_hash,
        "path": dg.MetadataValue.path(str(out_dir)),
        "content_hash": content_hash,
        **lineage,
    }
    if num_images:
        decoders = duckdb.sql(
            f"""SELECT source_format, coalesce(transfer_syntax, '') AS transfer_syntax, decoder,
                       photometric, voi, count(*) AS images
                FROM read_parquet('{glob}') GROUP BY ALL ORDER BY images DESC"""
        ).fetchall()
        columns = ["source_format", "transfer_syntax", "decoder", "photometric", "voi", "images"]
        metadata["decoders"] = dg.MetadataValue.md(
            markdown_table([dict(zip(columns, r, strict=True)) for r in decoders], columns)
        )
        metadata["preview"] = dg.MetadataValue.md(_preview(out_dir, summaries))
    return dg.MaterializeResult(
        asset_key="cxr_images", metadata=metadata, data_version=dg.DataVersion(content_hash)
    )


def _preview(out_dir: Path, summaries: list[dict[str, Any]], count: int = 12) -> str:
    first = next(s for s in summaries if s["num_images"])
    table = pq.read_table(
        out_dir / f"{first['shard']}.parquet",
        columns=["pixels", "height", "width", "view_position", "photometric"],
    ).slice(0, count)
    images = [
        np.frombuffer(r["pixels"], dtype=np.uint8).reshape(r["height"], r["width"])
        for r in table.to_pylist()
    ]
    captions = [f"{r['view_position'] or '?'} {r['photometric']}" for r in table.to_pylist()]
    return markdown_image(image_grid_png(images, captions, ncols=6, tile=112), "cxr_images")
