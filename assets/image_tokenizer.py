"""``image_tokenizer``: a VQ image tokenizer trained on TRAIN-split images, measured on VALIDATE."""

import dataclasses
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from assets import paths
from cxr.image_batches import split_images, train_batches
from cxr.previews import markdown_image, markdown_table
from pipelines.lineage import record_lineage
from pipelines.resources import MLflowResource, RayResource, StorageResource

REPO_SHARED_COVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid_chestxray"


class ImageTokenizerConfig(dg.Config):
    """Preset, optimisation and measurement of the VQ tokenizer."""

    preset: str = Field(
        default="small",
        description="debug (tests), small (CPU demo: 128 px, 16x16 codes), chexmix (512 px, "
        "32x32 = 1,024 codes from 8,192 entries; for GPUs)",
    )
    steps: int = Field(
        default=300, description="Optimizer steps (small preset: ~4-5 min on 2 cores)"
    )
    batch_size: int = Field(default=16, description="Images per step")
    lr: float = Field(default=1e-3, description="Peak learning rate")
    adversarial_weight: float = Field(
        default=0.0, description="PatchGAN hinge loss weight (0 = off)"
    )
    adversarial_start_step: int = Field(default=0, description="Discriminator warm-up steps")
    seed: int = Field(default=0, description="Seed of init, sampling and shuffling")
    max_val_images: int = Field(default=256, description="VALIDATE images used for metrics")
    device: str = Field(default="cpu", description="torch device (cpu, cuda)")
    num_workers: int = Field(
        default=1,
        description="1 = train in this process (CPU default); N > 1 = Ray Train DDP on N workers "
        "(local Ray or $RAY_ADDRESS), codebook statistics all-reduced across workers",
    )
    taming_checkpoint: str = Field(
        default="",
        description="Instead of training: import a Chameleon/CheXmix taming vqgan.ckpt from this "
        "local path (strict key check) with the chexmix preset (3 input channels)",
    )
    pretrained_dir: str = Field(
        default="",
        description="Instead of training: load an existing tokenizer directory saved by "
        "models.vq_tokenizer.save_checkpoint (e.g. another run's tokenizers/image); it is still "
        "measured and recorded here. Empty = train one",
    )
    real_check_dir: str = Field(
        default="auto",
        description="Folder of real CXR PNG/JPEG files for a PSNR check (not training data). "
        "'auto' = ../shared/data/covid_chestxray/images next to the repo when present; '' = skip",
    )
    real_check_images: int = Field(default=64, description="Real images used for that check")


def _images_glob(storage: StorageResource) -> str:
    return str(storage.path(*paths.IMAGES_DIR) / "shard-[0-9][0-9][0-9][0-9][0-9].parquet")


def real_check_images(folder: Path, count: int, size: int) -> np.ndarray | None:
    """Up to ``count`` real radiographs from a folder, through the raster pixel chain."""
    from cxr.errors import ImageRejected
    from cxr.pixels import PixelConfig, decode_raster

    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    images = []
    for path in files[:count]:
        try:
            images.append(decode_raster(path, PixelConfig(image_size=size)).pixels)
        except ImageRejected:
            continue
    return np.stack(images) if images else None


@dg.asset(
    group_name="tokenization",
    deps=["cxr_images", "splits"],
    kinds={"pytorch", "mlflow"},
    description="VQ image tokenizer (encoder, vector quantizer, decoder) trained on TRAIN-split "
    "images; PSNR/SSIM/codebook usage on VALIDATE (and on real CXRs) in MLflow and here.",
)
def image_tokenizer(
    context: dg.AssetExecutionContext,
    config: ImageTokenizerConfig,
    storage: StorageResource,
    mlflow_tracking: MLflowResource,
    ray: RayResource,
) -> dg.MaterializeResult:
    """Train (or import) the tokenizer into ``tokenizers/image``."""
    import mlflow
    import torch

    from cxr.progress import Progress
    from models.vq_tokenizer import (
        VQTokenizer,
        checkpoint_sha256,
        config_from_preset,
        import_taming_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )
    from models.vq_train import VQTrainConfig, evaluate_vq, recon_grid_png, train_vq

    images_glob, splits_path = _images_glob(storage), storage.path(*paths.SPLITS)
    val = list(split_images(images_glob, splits_path, "validate", limit=config.max_val_images))
    if not val:
        val = list(split_images(images_glob, splits_path, "test", limit=config.max_val_images))
        context.log.warning("VALIDATE split is empty; measuring on TEST images instead")
    if not val:
        raise dg.Failure("no VALIDATE or TEST images to measure the tokenizer on")
    val_images = np.stack(val)
    experiment_id = mlflow_tracking.experiment_id(storage)
    with mlflow.start_run(experiment_id=experiment_id, run_name="image_tokenizer") as run:
        mlflow.set_tags({"dagster_run_id": context.run.run_id, "asset": "image_tokenizer"})
        if config.taming_checkpoint:
            vq_config = config_from_preset("chexmix", in_channels=3)
            model: VQTokenizer = import_taming_checkpoint(config.taming_checkpoint, vq_config)
            history: list = []
        elif config.pretrained_dir:
            model = load_checkpoint(Path(config.pretrained_dir), config.device)
            vq_config = model.config
            history = []
        else:
            vq_config = config_from_preset(config.preset)
            torch.manual_seed(config.seed)  # the initial weights are part of the seeded run
            model = VQTokenizer(vq_config).to(config.device)
            train_config = VQTrainConfig(
                steps=config.steps,
                lr=config.lr,
                batch_size=config.batch_size,
                adversarial_weight=config.adversarial_weight,
                adversarial_start_step=config.adversarial_start_step,
                seed=config.seed,
                log_every=max(1, config.steps // 20),
            )
            mlflow.log_params(
                {f"train.{k}": v for k, v in dataclasses.asdict(train_config).items()}
            )

            progress = Progress("image tokenizer training", train_config.steps, context.log.info)

            def show(step: int, numeric: dict) -> None:
                shown = ("loss", "recon_loss", "steps_per_second", "val_psnr")
                progress.update(step, **{k: numeric[k] for k in shown if k in numeric})

            def log(step: int, metrics: dict) -> None:
                numeric = {
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and np.isfinite(v)
                }
                mlflow.log_metrics(numeric, step=step)
                show(step, numeric)

            if config.num_workers > 1:
                from pipelines.on_ray.vq_training import fit_vq_with_ray

                ray.ensure_started(min_cpus=config.num_workers)
                distributed_dir = storage.path("private", "vq_ray_checkpoint")
                ray_metrics = fit_vq_with_ray(
                    vq_config.to_dict(),
                    dataclasses.asdict(train_config),
                    images_glob,
                    splits_path,
                    val_images,
                    distributed_dir,
                    config.num_workers,
                    use_gpu=config.device.startswith("cuda"),
                    seed=config.seed,
                    on_progress=lambda row: show(int(row["step"]), row),
                )
                mlflow.log_metrics(
                    {k: float(v) for k, v in ray_metrics.items() if isinstance(v, int | float)}
                )
                model = load_checkpoint(distributed_dir)
                history = [ray_metrics]
            else:
                batches = (
                    torch.from_numpy(b)
                    for b in train_batches(images_glob, splits_path, config.batch_size, config.seed)
                )
                result = train_vq(model, batches, val_images, train_config, log=log)
                history = getattr(result, "history", [])
        mlflow.log_params({f"vq.{k}": v for k, v in vq_config.to_dict().items()})
        model.eval()
        metrics = evaluate_vq(model, val_images)
        mlflow.log_metrics(
            {f"val_{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        )
        real_metrics = {}
        real_dir = config.real_check_dir
        if real_dir == "auto":
            real_dir = str(REPO_SHARED_COVID / "images") if REPO_SHARED_COVID.is_dir() else ""
        if real_dir:
            real = real_check_images(Path(real_dir), config.real_check_images, vq_config.image_size)
            if real is not None:
                real_metrics = {
                    f"real_{k}": float(v)
                    for k, v in evaluate_vq(model, real).items()
                    if isinstance(v, int | float)
                }
                mlflow.log_metrics(real_metrics)
        shown = torch.from_numpy(val_images[:8])
        with torch.inference_mode():
            recon = (
                model.reconstruct(shown)
                if hasattr(model, "reconstruct")
                else model.decode(model.encode(shown))
            )
        grid = recon_grid_png(shown, recon)
        mlflow.log_image(_png_array(grid), "reconstructions.png")
        out = storage.path(*paths.IMAGE_TOKENIZER_DIR)
        save_checkpoint(model.cpu(), out)  # atomic: the old one stays until the new is complete
        sha = checkpoint_sha256(out)
        mlflow.log_artifacts(str(out), artifact_path="checkpoint")
        mlflow.set_tag("checkpoint_sha256", sha)
        run_id = run.info.run_id
    lineage = record_lineage(
        context,
        storage,
        [str(out)],
        sha,
        inputs=["cxr_images", "splits"],
        config={**config.model_dump(), "vq": vq_config.to_dict()},
    )
    rows = [
        {"metric": k, "value": f"{float(v):.4f}"}
        for k, v in {**metrics, **real_metrics}.items()
        if isinstance(v, int | float)
    ]
    context.log.info(f"image tokenizer: {metrics}")
    return dg.MaterializeResult(
        metadata={
            "preset": (
                "imported"
                if config.taming_checkpoint
                else "pretrained"
                if config.pretrained_dir
                else config.preset
            ),
            "codes_per_image": vq_config.codes_per_image,
            "codebook_size": vq_config.codebook_size,
            "num_val_images": len(val_images),
            **{f"val_{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)},
            **real_metrics,
            "metrics": dg.MetadataValue.md(markdown_table(rows, ["metric", "value"])),
            "reconstructions": dg.MetadataValue.md(markdown_image(grid, "originals / recons")),
            "train_log_points": len(history),
            "mlflow_run_id": run_id,
            "mlflow_tracking_uri": mlflow_tracking.resolved_uri(storage),
            "path": dg.MetadataValue.path(str(out)),
            "sha256": sha,
            **lineage,
        },
        data_version=dg.DataVersion(sha),
    )


def _png_array(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
