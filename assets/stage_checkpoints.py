"""The CheXmix training stages on Ray Train, and the control arm that makes stage 2 comparable.

``stage1_checkpoint``: next-token prediction over
``<|img|> codes <|/img|> <|endoftext|> report <|img|>``.
``stage2_checkpoint`` (initialised from stage 1): masked image-language next-token prediction:
per sample an image and a text mask ratio are drawn, those INPUT tokens become the mask id,
attention stays causal, and the targets are the original next tokens.
``stage1_continued_checkpoint`` (initialised from stage 1): stage 1's objective for as many more
steps as stage 2 trains, so "stage 2 beats stage 1" can be told apart from "more steps help"
(the CheXmix ablation's "stage 1 continued (equal steps)").
"""

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from assets import paths
from cxr.previews import markdown_image
from pipelines.checkpoints.publish import publish_checkpoint
from pipelines.lineage import content_hash_of, record_lineage
from pipelines.resources import MLflowResource, RayResource, StorageResource

CHECKPOINTS_ROOT = ("checkpoints",)


@dataclass(frozen=True)
class Arm:
    """One training asset: its objective and what it starts from."""

    asset: str
    objective: int  # 1 = next-token prediction, 2 = masked image-language next-token prediction
    init_asset: str | None = None  # the training asset whose published checkpoint it continues

    @property
    def folder(self) -> str:
        """``checkpoints/<folder>/``: where it publishes (and the prefix of its partition keys)."""
        return paths.TRAINING_POINTERS[self.asset][1]


STAGE1 = Arm("stage1_checkpoint", 1)
STAGE2 = Arm("stage2_checkpoint", 2, init_asset="stage1_checkpoint")
STAGE1_CONTINUED = Arm("stage1_continued_checkpoint", 1, init_asset="stage1_checkpoint")


@dataclass(frozen=True)
class TrainingRun:
    """How a training stage runs (what it optimises is ``models.lm_train.LMTrainConfig``).

    Attributes:
        lm_preset: Model shape: debug (tests), small (CPU demo), radphi2 (32 x 2560, GPUs).
        use_ray: Ray Train (TorchTrainer); False trains in the asset's process.
        num_workers: Ray Train workers (DDP; one GPU each with use_gpu).
        placement_strategy: Where Ray puts the workers: PACK (fewest nodes), SPREAD (distinct
            nodes if possible), STRICT_PACK (one node) or STRICT_SPREAD (one node per worker;
            waits for them).
        use_gpu: One GPU per worker.
        max_failures: Worker-group restarts, each resuming from the latest checkpoint.
        pretrained_path: Stage 1 only: local Phi weights (e.g. RadPhi-2) to start from; the
            vocabulary is resized as CheXmix does.
        val_max_rows: VALIDATE sequences for the validation loss after training.
    """

    lm_preset: str = "small"
    use_ray: bool = True
    num_workers: int = 1
    placement_strategy: str = "PACK"
    use_gpu: bool = False
    max_failures: int = 2
    pretrained_path: str = ""
    val_max_rows: int = 512

    def __post_init__(self) -> None:
        from pipelines.on_ray.lm_training import PLACEMENT_STRATEGIES

        errors = []
        if self.lm_preset not in LM_PRESET_NAMES:
            errors.append(f"lm_preset must be one of {LM_PRESET_NAMES}, got {self.lm_preset!r}")
        if self.num_workers < 1:
            errors.append(f"num_workers must be >= 1, got {self.num_workers}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            errors.append(
                f"placement_strategy must be one of {PLACEMENT_STRATEGIES}, "
                f"got {self.placement_strategy!r}"
            )
        if self.max_failures < 0 or self.val_max_rows < 0:
            errors.append("max_failures and val_max_rows must be >= 0")
        if errors:
            raise ValueError("invalid training run: " + "; ".join(errors))


#: ``models.early_fusion.LM_PRESETS`` names (not imported: that module loads torch).
LM_PRESET_NAMES = ("debug", "tiny", "small", "radphi2")

#: Named bundles of overrides of ``LMTrainConfig`` and ``TrainingRun`` fields. A field the run
#: config leaves unset takes the preset's value, else the core default.
TRAINING_PRESETS: dict[str, dict[str, Any]] = {
    # tests: a few steps in-process
    "debug": {
        "lm_preset": "debug",
        "steps": 16,
        "batch_size": 4,
        "lr": 1e-3,
        "warmup_steps": 2,
        "max_text_tokens": 32,
        "checkpoint_every": 8,
        "use_ray": False,
        "val_max_rows": 32,
    },
    # the CPU demo (make demo): the tiny model, 4,800 sequences per arm, a few minutes per arm
    # on 2 cores (chosen on VALIDATE with bench/demo_budget.py; see the README)
    "demo": {
        "lm_preset": "tiny",
        "steps": 300,
        "batch_size": 16,
        "lr": 2e-3,
        "warmup_steps": 20,
        "max_text_tokens": 128,
        "checkpoint_every": 100,
    },
    # RadPhi-2's shape on GPUs: bf16 autocast, regional compile, batch 16 per GPU
    "radphi2": {
        "lm_preset": "radphi2",
        "use_gpu": True,
        "dtype": "bfloat16",
        "compile": True,
        "batch_size": 16,
        "max_text_tokens": 128,
    },
}

#: Fields the training assets set themselves.
ASSET_SET_FIELDS = ("stage",)


def _stage_config_class() -> type[dg.Config]:
    from models.train_config import LMTrainConfig
    from pipelines.config import config_class

    return config_class(
        "StageConfig",
        "Training of one arm: the LMTrainConfig and TrainingRun fields, each unset one taken "
        "from the preset, else its core default.",
        [LMTrainConfig, TrainingRun],
        TRAINING_PRESETS,
        default_preset="demo",
        exclude=ASSET_SET_FIELDS,
    )


StageConfig = _stage_config_class()


def stage_settings(config: dg.Config, objective: int) -> tuple[Any, TrainingRun]:
    """The validated ``(LMTrainConfig, TrainingRun)`` of a run config for one objective."""
    from models.train_config import LMTrainConfig
    from pipelines.config import resolve, resolve_preset

    values = resolve_preset(config, TRAINING_PRESETS)
    steps = int(values.get("steps", LMTrainConfig.steps))
    fixed: dict[str, Any] = {"stage": objective}
    # a short run keeps one step after the warm-up; stage 1 trains on every target
    fixed["warmup_steps"] = min(
        int(values.get("warmup_steps", LMTrainConfig.warmup_steps)), max(steps - 1, 0)
    )
    if objective == 1:
        fixed["loss_on"] = "all"
    if "log_every" not in values:
        fixed["log_every"] = max(1, steps // 50)
    return resolve(LMTrainConfig, values, **fixed), resolve(TrainingRun, values)


def _loss_curve_png(history: list[dict[str, float]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
    steps = [h["step"] for h in history]
    for key in ("loss", "image_loss", "text_loss"):
        values = [h.get(key, np.nan) for h in history]
        if any(np.isfinite(values)):
            ax.plot(steps, values, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def train_stage(
    context: dg.AssetExecutionContext,
    config: StageConfig,
    arm: Arm,
    storage: StorageResource,
    mlflow_tracking: MLflowResource,
    ray: RayResource,
) -> dg.MaterializeResult:
    """Run one arm, publish its final checkpoint, log everything; shared by the training assets."""
    import mlflow

    from models.lm_data import iter_eval_batches, shard_paths_from_manifest
    from models.lm_train import evaluate_lm, load_lm_checkpoint
    from models.vocabulary import Vocabulary

    tokens_dir = storage.path(*paths.TOKENS_DIR)
    vocab_path = storage.path(*paths.VOCABULARY)
    vocab = Vocabulary.load(vocab_path)
    shard_paths = [str(p) for p in shard_paths_from_manifest(tokens_dir, verify=True)]
    token_manifest = json.loads((tokens_dir / "_manifest.json").read_text())
    run_tag = context.run.run_id[:8]
    init_checkpoint = None
    inputs = ["token_shards", "vocabulary"]
    if arm.init_asset:
        from pipelines.checkpoints.publish import verified_from_pointer

        init_path, _ = verified_from_pointer(storage.path(*paths.TRAINING_POINTERS[arm.init_asset]))
        init_checkpoint = str(init_path)
        inputs.append(arm.init_asset)
    train, run_settings = stage_settings(config, arm.objective)
    train_config = train.to_dict()
    run_config = dataclasses.asdict(run_settings)
    loop_config: dict[str, Any] = {
        "shard_paths": shard_paths,
        "vocab_path": str(vocab_path),
        "train": train_config,
        "lm_preset": run_settings.lm_preset,
        "split": "train",
    }
    if init_checkpoint:
        loop_config["init_checkpoint"] = init_checkpoint
    if run_settings.pretrained_path and not arm.init_asset:
        loop_config["pretrained_path"] = run_settings.pretrained_path
    hashes = {
        "token_shards_hash": token_manifest["content_hash"],
        "image_tokenizer_sha256": token_manifest["image_tokenizer_sha256"],
        "text_tokenizer_sha256": token_manifest["text_tokenizer_sha256"],
        "vocabulary_sha256": content_hash_of("vocabulary", storage),
    }
    experiment_id = mlflow_tracking.experiment_id(storage)
    with mlflow.start_run(experiment_id=experiment_id, run_name=arm.folder) as run:
        from cxr.lineage import git_code_version

        mlflow.set_tags(
            {
                "dagster_run_id": context.run.run_id,
                "stage": str(arm.objective),
                "arm": arm.folder,
                "code_version": git_code_version(),
            }
        )
        mlflow.log_params(
            {
                **{f"train.{k}": v for k, v in train_config.items()},
                **{f"run.{k}": v for k, v in run_config.items()},
                "preset": config.preset,
                **hashes,
            }
        )
        history, summary, final = _run(
            context,
            run_settings,
            loop_config,
            storage,
            ray,
            arm.folder,
            run_tag,
            shard_paths,
            vocab,
        )
        for row in history:
            mlflow.log_metrics(
                {k: float(v) for k, v in row.items() if k != "step" and np.isfinite(v)},
                step=int(row["step"]),
            )
        model, info = load_lm_checkpoint(final)
        val = evaluate_lm(
            model,
            iter_eval_batches(
                shard_paths,
                vocab,
                batch_size=train.batch_size,
                max_text_tokens=train.max_text_tokens,
                split="validate",
                max_rows=run_settings.val_max_rows,
            ),
            vocab,
        )
        mlflow.log_metrics(
            {f"val_{k}": float(v) for k, v in val.items() if isinstance(v, int | float)}
        )
        curve = _loss_curve_png(history, arm.folder) if history else b""
        if curve:
            mlflow.log_image(_png_array(curve), f"{arm.folder}_loss.png")
        step = int(info["step"])
        target = storage.path(*CHECKPOINTS_ROOT, arm.folder, f"step_{step:06d}-{run_tag}")
        manifest = publish_checkpoint(
            Path(final),
            target,
            {
                "stage": arm.objective,
                "arm": arm.folder,
                "step": step,
                "lm_preset": run_settings.lm_preset,
                "val": {k: float(v) for k, v in val.items() if isinstance(v, int | float)},
                "mlflow_run_id": run.info.run_id,
                "dagster_run_id": context.run.run_id,
                "code_version": git_code_version(),
                "train_config": train_config,
                "init_checkpoint": init_checkpoint,
                **hashes,
            },
        )
        mlflow.set_tag("checkpoint_path", str(target))
        mlflow_run_id = run.info.run_id
    pointer = storage.path(*paths.TRAINING_POINTERS[arm.asset])
    from cxr.storage import write_json

    write_json(
        {
            "path": str(target),
            "content_hash": manifest["content_hash"],
            "step": step,
            "mlflow_run_id": mlflow_run_id,
        },
        pointer,
    )
    lineage = record_lineage(
        context,
        storage,
        [str(target), str(pointer)],
        manifest["content_hash"],
        inputs=inputs,
        config={"preset": config.preset, "train": train_config, "run": run_config, **hashes},
    )
    first = history[0] if history else {}
    last = history[-1] if history else {}
    metadata: dict[str, Any] = {
        "steps": step,
        "first_loss": float(first.get("loss", np.nan)),
        "final_loss": float(last.get("loss", np.nan)),
        "final_image_loss": float(last.get("image_loss", np.nan)),
        "final_text_loss": float(last.get("text_loss", np.nan)),
        **{f"val_{k}": float(v) for k, v in val.items() if isinstance(v, int | float)},
        "tokens_per_second": float(summary.get("tokens_per_second", np.nan)),
        "world_size": int(summary.get("world_size", 1)),
        "resumed_from_step": int(summary.get("start_step", 0)),
        "worker_node_ids": dg.MetadataValue.json(list(summary.get("worker_node_ids", []))),
        "checkpoint": dg.MetadataValue.path(str(target)),
        "mlflow_run_id": mlflow_run_id,
        **hashes,
        **lineage,
    }
    if curve:
        metadata["loss_curve"] = dg.MetadataValue.md(markdown_image(curve, "loss"))
    return dg.MaterializeResult(
        metadata=metadata, data_version=dg.DataVersion(manifest["content_hash"])
    )


def _run(
    context: dg.AssetExecutionContext,
    config: TrainingRun,
    loop_config: dict[str, Any],
    storage: StorageResource,
    ray: RayResource,
    name: str,
    run_tag: str,
    shard_paths: list[str],
    vocab: Any,
) -> tuple[list[dict[str, float]], dict[str, Any], str]:
    """Train; return (history, summary, final complete checkpoint path)."""
    log = _progress_log(context, name, loop_config["train"]["steps"])
    if config.use_ray:
        from pipelines.on_ray.lm_training import fit_with_ray

        ray.ensure_started(min_cpus=config.num_workers)
        result = fit_with_ray(
            loop_config,
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            storage_path=str(storage.path(*CHECKPOINTS_ROOT, "ray")),
            run_name=f"{name}-{context.run.run_id}",
            max_failures=config.max_failures,
            placement_strategy=config.placement_strategy,
            on_progress=lambda row: log(int(row["step"]), row),
        )
        summary = {**result.get("worker_summary", {}), "start_step": result.get("start_step", 0)}
        history = summary.get("history") or [
            {"step": float(result["steps"]), **result.get("metrics", {})}
        ]
        return [h for h in history if isinstance(h, dict)], summary, str(result["checkpoint_path"])
    import torch

    from models.early_fusion import build_model, lm_config_from_preset
    from models.lm_data import TokenShardBatches
    from models.lm_train import LMTrainConfig, load_lm_checkpoint, train_lm

    train_config = LMTrainConfig.from_dict(loop_config["train"])
    lm_config = lm_config_from_preset(config.lm_preset)
    torch.manual_seed(train_config.seed)
    if loop_config.get("init_checkpoint"):
        model, _ = load_lm_checkpoint(loop_config["init_checkpoint"])
        model.train()
    else:
        max_positions = _max_positions(shard_paths, train_config.max_text_tokens)
        model = build_model(lm_config, vocab, max_positions)
    data = TokenShardBatches(
        shard_paths,
        vocab,
        train_config.batch_size,
        train_config.max_text_tokens,
        split="train",
        seed=train_config.seed,
    )
    checkpoint_dir = storage.path(*CHECKPOINTS_ROOT, "local", f"{name}-{run_tag}")
    result = train_lm(
        model,
        data,
        train_config,
        checkpoint_dir=checkpoint_dir,
        log=log,
        lm_config=lm_config.to_dict() if hasattr(lm_config, "to_dict") else None,
    )
    summary = {
        "tokens_per_second": result.tokens_per_second,
        "world_size": 1,
        "start_step": result.start_step,
    }
    return result.history, summary, str(result.final_checkpoint)


def _progress_log(context: dg.AssetExecutionContext, name: str, steps: int) -> Any:
    """``log(step, metrics)`` that writes a progress line to the run log every ~15 s."""
    from cxr.progress import Progress

    progress = Progress(f"{name} training", steps, context.log.info)
    keys = ("loss", "image_loss", "text_loss", "lr", "tokens_per_s", "step_s")

    def log(step: int, metrics: dict[str, Any]) -> None:
        progress.update(step, **{k: metrics[k] for k in keys if k in metrics})

    return log


def _max_positions(shard_paths: list[str], max_text_tokens: int) -> int:
    import pyarrow.parquet as pq

    codes = pq.read_schema(shard_paths[0]).field("image_codes").type.list_size
    return codes + max_text_tokens + 4


def _png_array(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def training_asset(arm: Arm, description: str) -> dg.AssetsDefinition:
    """The Dagster asset that trains ``arm`` (one per training arm, same resources and config)."""

    @dg.asset(
        name=arm.asset,
        group_name="training",
        deps=[arm.init_asset] if arm.init_asset else ["token_shards", "vocabulary"],
        kinds={"pytorch", "ray", "mlflow"},
        description=description,
    )
    def train(
        context: dg.AssetExecutionContext,
        config: StageConfig,
        storage: StorageResource,
        mlflow_tracking: MLflowResource,
        ray: RayResource,
    ) -> dg.MaterializeResult:
        return train_stage(context, config, arm, storage, mlflow_tracking, ray)

    return train


def stage_checkpoints_assets() -> list[dg.AssetsDefinition]:
    """The training assets of this module (one per arm)."""
    return [stage1_checkpoint, stage2_checkpoint, stage1_continued_checkpoint]


stage1_checkpoint = training_asset(
    STAGE1,
    "Stage 1: plain next-token prediction over image codes and report tokens (loss on both, "
    "per-modality weights, padding never in the loss), on Ray Train.",
)
stage2_checkpoint = training_asset(
    STAGE2,
    "Stage 2 (from stage 1): masked image-language next-token prediction: random image/text "
    "input tokens replaced by the mask id, targets the original next tokens.",
)
stage1_continued_checkpoint = training_asset(
    STAGE1_CONTINUED,
    "Control arm: stage 1's plain next-token objective continued from the stage-1 checkpoint "
    "for as many steps as stage 2 (keep `steps` equal to stage 2's), so evaluation can tell the "
    "masked objective from extra training.",
)
