"""``token_shards``: raw image codes + report token ids + labels per image, Parquet shards."""

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import dagster as dg
import duckdb
from pydantic import Field

from assets import paths
from cxr.previews import markdown_table
from cxr.progress import Progress
from cxr.storage import ensure_writable_dir
from cxr.token_shards import (
    ShardTokenizer,
    TokenTask,
    finalize_token_shards,
    invalidate_token_manifest,
    plan_token_shards,
)
from pipelines.lineage import content_hash_of, record_lineage
from pipelines.resources import RayResource, StorageResource


class TokenShardsConfig(dg.Config):
    """Parallelism of tokenization."""

    batch_size: int = Field(default=64, description="Images per encoder forward pass")
    use_ray: bool = Field(
        default=True, description="Ray Data actors (one tokenizer per worker); False = in-process"
    )
    num_workers: int = Field(
        default=2,
        description="Tokenizer actors (Ray); capped by the shards and by the CPUs (or GPUs) the "
        "Ray cluster has",
    )
    device: str = Field(default="cpu", description="cpu, or cuda for GPU workers")
    precision: str = Field(
        default="float32",
        description="Encoder precision: float32, or float16 / bfloat16 autocast (GPUs; the "
        "nearest-code search stays fp32; measure code agreement with bench/tokenize.py). See "
        "models.vq_tokenizer.EncodeOptions",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the encoder (GPUs: fuses GroupNorm/SiLU; compiled once per "
        "worker on its first batch)",
    )
    channels_last: bool = Field(default=True, description="channels-last convolutions")
    overlap: bool = Field(
        default=True,
        description="Read/decode the next shard and write the previous one in background "
        "threads while the encoder runs (same output bytes)",
    )
    actor_start_timeout_s: int = Field(
        default=600,
        description="Seconds to wait until every tokenizer actor is up before shards are handed "
        "out (so the shards spread over all workers and nodes); 0 = start on the first one",
    )

    def encode_options(self) -> Any:
        """The validated ``models.vq_tokenizer.EncodeOptions``.

        That dataclass owns these fields' defaults and validation; it is imported here, not when
        the definitions load, because it imports torch.
        """
        from models.vq_tokenizer import EncodeOptions

        return EncodeOptions(
            precision=self.precision, compile=self.compile, channels_last=self.channels_last
        )


def run_token_tasks(
    tasks: list[TokenTask],
    kwargs: dict[str, Any],
    config: TokenShardsConfig,
    ray_resource: RayResource | None,
    on_summary: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Tokenize every shard, with Ray Data actors when ``ray_resource`` is given.

    ``on_summary`` is called with each shard's summary as it arrives (progress).

    On Ray, a fixed pool of ``ShardTokenizer`` actors (one CPU, or one GPU, each) takes one
    whole shard at a time, and shards are handed out only once every actor is up, so a pool of
    N actors on N nodes tokenizes on all N nodes. Each summary row names its ``node_id``.
    """
    if ray_resource is None or not tasks:
        return ShardTokenizer(**kwargs).process_all(tasks, on_summary) if tasks else []
    import ray
    import ray.data

    ray_resource.ensure_started()
    gpu = config.device.startswith("cuda")
    capacity = int(ray.cluster_resources().get("GPU" if gpu else "CPU", 0))
    size = max(1, min(config.num_workers, len(tasks), capacity or config.num_workers))
    dataset = ray.data.from_items([dataclasses.asdict(t) for t in tasks]).map_batches(
        ShardTokenizer,
        fn_constructor_kwargs=kwargs,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
        num_cpus=0 if gpu else 1,
        num_gpus=1 if gpu else 0,
    )
    if config.actor_start_timeout_s > 0:  # this dataset's own context copy
        dataset.context.wait_for_min_actors_s = config.actor_start_timeout_s
    summaries = []
    for summary in dataset.iter_rows():  # as each shard is done, not all at the end
        summaries.append(summary)
        if on_summary is not None:
            on_summary(summary)
    return summaries


def nodes_table(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shards and rows per Ray node (``""``: in-process), for run metadata."""
    per_node: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        node = summary.get("node_id") or "in-process"
        row = per_node.setdefault(node, {"node_id": node, "shards": 0, "rows": 0, "reused": 0})
        row["shards"] += 1
        row["rows"] += summary["num_rows"]
        row["reused"] += int(bool(summary["reused"]))
    return sorted(per_node.values(), key=lambda r: r["node_id"])


@dg.asset(
    group_name="tokenization",
    deps=["cxr_images", "splits", "report_sections", "finding_labels", "vocabulary"],
    kinds={"parquet", "ray"},
    description="One row per decoded image: ids, split, view, RAW image codes (int16), report "
    "token ids, the 14 labels; tokenizer and preprocessing hashes in the file metadata; "
    "_manifest.json written last.",
)
def token_shards(
    context: dg.AssetExecutionContext,
    config: TokenShardsConfig,
    storage: StorageResource,
    ray: RayResource,
) -> dg.MaterializeResult:
    """Tokenize every image shard into ``tokens/shard-NNNNN.parquet``."""
    images_dir = storage.path(*paths.IMAGES_DIR)
    image_manifest = json.loads((images_dir / "_manifest.json").read_text())
    vocab_json = storage.path(*paths.VOCABULARY).read_text()
    hashes = {
        "image_tokenizer_sha256": content_hash_of("image_tokenizer", storage),
        "text_tokenizer_sha256": content_hash_of("text_tokenizer", storage),
        "pixel_config_hash": image_manifest["pixel_config_hash"],
        "vocabulary_sha256": content_hash_of("vocabulary", storage),
    }
    tokenizer_hash = "|".join(hashes[k] for k in sorted(hashes))
    out_dir = ensure_writable_dir(storage.path(*paths.TOKENS_DIR))
    plan_path = storage.path(*paths.TOKENS_PLAN)
    tasks = plan_token_shards(
        images_dir,
        [s for s in image_manifest["shards"] if s["num_images"]],
        storage.path(*paths.SPLITS),
        storage.path(*paths.REPORT_SECTIONS),
        storage.path(*paths.FINDING_LABELS),
        plan_path,
        tokenizer_hash,
    )
    kwargs = {
        "vq_dir": str(storage.path(*paths.IMAGE_TOKENIZER_DIR)),
        "text_tokenizer_dir": str(storage.path(*paths.TEXT_TOKENIZER_DIR)),
        "images_dir": str(images_dir),
        "plan_path": str(plan_path),
        "out_dir": str(out_dir),
        "file_metadata": {
            f"chexmix.{k}": v for k, v in {**hashes, "vocabulary": vocab_json}.items()
        },
        "batch_size": config.batch_size,
        "device": config.device,
        **dataclasses.asdict(config.encode_options()),
        "overlap": config.overlap,
    }
    invalidate_token_manifest(out_dir, tasks)  # a killed re-run never leaves a mixed set listed
    progress = Progress("token shards", len(tasks), context.log.info, unit="shard")
    images = 0

    def on_summary(summary: dict[str, Any]) -> None:
        nonlocal images
        images += int(summary["num_rows"])
        progress.update(progress.done + 1, images=images)

    summaries = run_token_tasks(tasks, kwargs, config, ray if config.use_ray else None, on_summary)
    content_hash = finalize_token_shards(
        out_dir, summaries, {**hashes, "vocabulary": json.loads(vocab_json)}
    )
    glob = str(out_dir / "shard-[0-9][0-9][0-9][0-9][0-9].parquet")
    storage.catalog().register_views({"token_shards": glob})
    per_split = (
        duckdb.connect()
        .execute(
            f"""SELECT split, count(*) AS images, count(DISTINCT study_id) AS studies,
                   round(avg(len(text_ids)), 1) AS mean_text_tokens
            FROM read_parquet('{glob}') GROUP BY split ORDER BY split"""
        )
        .fetchall()
    )
    lineage = record_lineage(
        context,
        storage,
        [str(out_dir / "_manifest.json"), glob],
        content_hash,
        inputs=["cxr_images", "splits", "report_sections", "finding_labels", "vocabulary"],
        config={**config.model_dump(), **hashes},
    )
    num_rows = sum(s["num_rows"] for s in summaries)
    nodes = nodes_table(summaries)
    return dg.MaterializeResult(
        metadata={
            "num_rows": num_rows,
            "num_shards": len(summaries),
            "num_shards_reused": sum(1 for s in summaries if s["reused"]),
            "num_nodes": len(nodes),
            "shards_per_node": dg.MetadataValue.json({r["node_id"]: r["shards"] for r in nodes}),
            "nodes": dg.MetadataValue.md(
                markdown_table(nodes, ["node_id", "shards", "rows", "reused"])
            ),
            "per_split": dg.MetadataValue.md(
                markdown_table(
                    [
                        dict(
                            zip(("split", "images", "studies", "mean_text_tokens"), r, strict=True)
                        )
                        for r in per_split
                    ],
                    ["split", "images", "studies", "mean_text_tokens"],
                )
            ),
            **hashes,
            "path": dg.MetadataValue.path(str(out_dir)),
            "content_hash": content_hash,
            **lineage,
        },
        data_version=dg.DataVersion(content_hash),
    )
