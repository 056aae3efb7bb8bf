"""Benchmark evaluation, one asset per task, partitioned by checkpoint.

Each asset: resolve the partition's checkpoint and verify its files, load the model and the
TEST (and where needed TRAIN) rows from the token shards, run the task (``evaluation/``), keep
per-sample outputs as Parquet under ``<storage>/evaluation/<checkpoint>/<task>/``, upsert the
metric rows into DuckDB ``eval_results``, log an MLflow run nested under the checkpoint's
training run, and record lineage. Re-running a partition replaces its rows (idempotent).
"""

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from assets import paths
from cxr.previews import markdown_image, markdown_table
from evaluation.data import DEFAULT_UNCERTAINTY_POLICY
from evaluation.findings import FindingsConfig
from evaluation.inpainting import InpaintingConfig
from evaluation.report_generation import ReportGenerationConfig
from evaluation.results import EvalRunInfo, MetricRow, rows_frame, upsert_results
from evaluation.retrieval import RetrievalConfig
from pipelines.lineage import content_hash_of, record_lineage
from pipelines.partitions import checkpoints_partitions
from pipelines.resources import MLflowResource, StorageResource

EVAL_GROUP = "evaluation"


@dataclass(frozen=True)
class EvalRun:
    """How an evaluation runs, whatever the task (what it measures is the task's core config).

    Attributes:
        device: Where the model runs: cpu, cuda, cuda:1 ...
        max_test_rows: TEST images used (a fixed hash-chosen subset beyond this).
    """

    device: str = "cpu"
    max_test_rows: int = 2000


@dataclass(frozen=True)
class FindingsRun(EvalRun):
    """How the findings evaluation runs.

    Attributes:
        max_validate_rows: VALIDATE images the layer is chosen on (hash-chosen subset).
    """

    max_validate_rows: int = 5000


@dataclass(frozen=True)
class InpaintingRun(EvalRun):
    """How the inpainting evaluation runs.

    Attributes:
        max_train_rows: TRAIN images of the image-blind baseline (hash-chosen subset).
    """

    max_train_rows: int = 5000


@dataclass(frozen=True)
class ReportGenerationRun(EvalRun):
    """How the report-generation evaluation runs.

    Attributes:
        max_test_rows: TEST images whose reports are generated.
        max_train_rows: TRAIN images of the nearest-report baselines (hash-chosen subset).
    """

    max_test_rows: int = 500
    max_train_rows: int = 5000


@dataclass(frozen=True)
class RetrievalRun(EvalRun):
    """How the retrieval evaluation runs.

    Attributes:
        max_test_rows: TEST images (and their studies' reports) ranked against each other;
            cost grows with its square.
    """

    max_test_rows: int = 200


@dataclass(frozen=True)
class EvalTask:
    """One benchmark's settings: a run dataclass (asset level) and the task's core config.

    Attributes:
        name: Task name (``findings``, ...).
        run: The asset-level dataclass (device, row caps).
        core: The core config dataclass of ``evaluation/<task>.py``: it owns its fields'
            defaults, docs and validation.
        asset_set: Core fields the asset sets itself (from the checkpoint or another task).
        renames: Core field -> launchpad name (names users already write).
        unset: Launchpad field -> what unset means, where the asset resolves it itself.
    """

    name: str
    run: type
    core: type
    asset_set: tuple[str, ...] = ()
    renames: dict[str, str] = dataclasses.field(default_factory=dict)
    unset: dict[str, str] = dataclasses.field(default_factory=dict)

    def config_class(self, name: str, doc: str) -> type[dg.Config]:
        """The launchpad config of the task's asset, generated from ``run`` and ``core``."""
        from pipelines.config import config_class

        return config_class(
            name,
            doc,
            [self.run, self.core],
            exclude=self.asset_set,
            renames=self.renames,
            unset=self.unset,
        )

    def run_settings(self, config: dg.Config) -> Any:
        """The validated ``run`` dataclass of a run config."""
        from pipelines.config import resolve, set_values

        return resolve(self.run, set_values(config))

    def core_settings(self, config: dg.Config, **fixed: Any) -> Any:
        """The validated core config of a run config; ``fixed`` sets the ``asset_set`` fields."""
        from pipelines.config import resolve, set_values

        return resolve(self.core, set_values(config), self.renames, **fixed)

    def settings(self, config: dg.Config, **fixed: Any) -> tuple[Any, Any]:
        """``(run_settings, core_settings)``."""
        return self.run_settings(config), self.core_settings(config, **fixed)

    def recorded(self, run: Any, core: Any) -> dict[str, Any]:
        """The resolved settings under their launchpad names (eval_results, MLflow, lineage)."""
        values = {self.renames.get(k, k): v for k, v in dataclasses.asdict(core).items()}
        return {**dataclasses.asdict(run), **values}


FINDINGS = EvalTask(
    "findings",
    FindingsRun,
    FindingsConfig,
    renames={"max_train_images": "max_train_rows"},
    unset={
        "uncertainty_policy": "the policy finding_labels built its training targets with "
        f"({DEFAULT_UNCERTAINTY_POLICY} if none is found)"
    },
)
INPAINTING = EvalTask("inpainting", InpaintingRun, InpaintingConfig)
# feature_layer: the layer findings_eval chose on VALIDATE
REPORT_GENERATION = EvalTask(
    "report_generation", ReportGenerationRun, ReportGenerationConfig, asset_set=("feature_layer",)
)
# max_text_tokens: the report tokens the checkpoint was trained with
RETRIEVAL = EvalTask("retrieval", RetrievalRun, RetrievalConfig, asset_set=("max_text_tokens",))
EVAL_TASKS = (FINDINGS, INPAINTING, REPORT_GENERATION, RETRIEVAL)

FindingsEvalConfig = FINDINGS.config_class(
    "FindingsEvalConfig", "Findings AUROC under image-token masking: FindingsRun + FindingsConfig."
)
InpaintingEvalConfig = INPAINTING.config_class(
    "InpaintingEvalConfig",
    "One-pass inpainting of masked image tokens: InpaintingRun + InpaintingConfig.",
)
ReportGenerationEvalConfig = REPORT_GENERATION.config_class(
    "ReportGenerationEvalConfig",
    "Greedy report generation: ReportGenerationRun + ReportGenerationConfig.",
)
RetrievalEvalConfig = RETRIEVAL.config_class(
    "RetrievalEvalConfig",
    "Image <-> report retrieval by PMI likelihood: RetrievalRun + RetrievalConfig.",
)


def _config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _mlflow_name(*parts: object) -> str:
    name = "/".join(str(p) for p in parts if p != "")
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name.replace("@", "_at_"))


class EvalContext:
    """Everything a task needs for one partition: checkpoint, model, vocabulary, shards."""

    def __init__(self, context: dg.AssetExecutionContext, run: EvalRun, storage: StorageResource):
        from models.lm_data import shard_paths_from_manifest
        from models.vocabulary import Vocabulary
        from pipelines.checkpoints.registry import find, open_manifest

        self.key = context.partition_key
        self.ref = find(storage.root_path, self.key)
        self.manifest = open_manifest(self.ref)
        self.storage = storage
        self.run = run
        self.vocab = Vocabulary.load(storage.path(*paths.VOCABULARY))
        checkpoint_vocab = Vocabulary.load(self.ref.path / "vocab.json")
        if checkpoint_vocab != self.vocab:
            raise dg.Failure(
                f"checkpoint {self.key} was trained with vocabulary {checkpoint_vocab} but the "
                f"token shards use {self.vocab}; evaluate it on the data it was trained for"
            )
        self.shard_paths = [
            str(p) for p in shard_paths_from_manifest(storage.path(*paths.TOKENS_DIR), verify=True)
        ]
        self._model = None

    @property
    def model(self):
        """The checkpoint's LM in eval mode (loaded once)."""
        if self._model is None:
            from models.lm_train import load_lm_checkpoint

            self._model, _ = load_lm_checkpoint(self.ref.path, map_location=self.run.device)
        return self._model

    def split(self, name: str, max_rows: int, by_patient: bool = False):
        """Rows of one split (capped, hash-chosen; whole patients with ``by_patient``)."""
        from evaluation.data import load_split

        return load_split(self.shard_paths, name, max_rows=max_rows, by_patient=by_patient)

    @property
    def max_text_tokens(self) -> int:
        """Report tokens per sequence the checkpoint was trained with."""
        return int((self.manifest.get("train_config") or {}).get("max_text_tokens", 128))

    def out_dir(self, task: str) -> Path:
        """Where a task's per-sample outputs go."""
        return self.storage.path("evaluation", self.key, task)


def findings_settings(config: dg.Config, storage) -> tuple[FindingsRun, FindingsConfig]:
    """The findings settings of a run config; an unset policy is read from the labels."""
    from evaluation.data import policy_of_labels

    fixed = {}
    if not config.uncertainty_policy:  # unset ("" too: the old default users may have copied)
        labels = storage.path(*paths.FINDING_LABELS)
        fixed["uncertainty_policy"] = (
            policy_of_labels(labels) if labels.is_file() else None
        ) or DEFAULT_UNCERTAINTY_POLICY
    return FINDINGS.settings(config, **fixed)


def _selection_path(ec: "EvalContext") -> Path:
    return ec.out_dir("findings") / "layer_selection.json"


def _selection_key(ec: "EvalContext", core: FindingsConfig) -> dict[str, Any]:
    """What a layer choice depends on: the checkpoint, the data and the probe settings."""
    return {
        "checkpoint_hash": ec.manifest["content_hash"],
        "token_shards": [Path(p).name for p in ec.shard_paths],
        "layer": core.layer,
        "candidate_layers": list(core.candidate_layers),
        "probe_c": core.probe_c,
        "min_test_positives": core.min_test_positives,
        "min_validate_positives": core.min_validate_positives,
        "uncertainty_policy": core.uncertainty_policy,
        "views": core.views,
        "max_train_images": core.max_train_images,
        "seed": core.seed,
    }


def save_layer_selection(ec: "EvalContext", core: FindingsConfig, selection) -> None:
    """Keep the findings task's layer choice for the other tasks of the checkpoint."""
    from cxr.storage import write_json

    write_json(
        {"key": _selection_key(ec, core), "selection": selection.to_dict()}, _selection_path(ec)
    )


def chosen_layer(ec: "EvalContext", storage) -> tuple[int, str]:
    """The layer the findings task chose on VALIDATE for this checkpoint, and where it came from.

    Read from the latest findings evaluation of this checkpoint on these token shards (its
    settings are in the saved key); when there is none, chosen here the same way with the
    default findings settings (TRAIN probes, VALIDATE macro AUROC).
    """
    from evaluation.findings import LayerSelection, select_layer

    run, core = findings_settings(FindingsEvalConfig(), storage)
    path = _selection_path(ec)
    if path.is_file():
        saved = json.loads(path.read_text())
        key = _selection_key(ec, core)
        if all(saved["key"].get(k) == key[k] for k in ("checkpoint_hash", "token_shards")):
            return LayerSelection.from_dict(saved["selection"]).layer, "findings_eval"
    from evaluation.findings import prepare_rows

    train = prepare_rows(ec.split("train", core.max_train_images, by_patient=True), core, True)
    validate = prepare_rows(ec.split("validate", run.max_validate_rows), core)
    selection, _ = select_layer(ec.model, ec.vocab, train, validate, core)
    return selection.layer, f"chosen here on VALIDATE ({selection.status})"


def finish(
    context: dg.AssetExecutionContext,
    ec: EvalContext,
    task: str,
    settings: dict[str, Any],
    rows: list[MetricRow],
    samples,
    mlflow_tracking: MLflowResource,
    inputs: list[str],
    previews: dict[str, bytes] | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> dg.MaterializeResult:
    """Persist one task's outputs: samples, eval_results, MLflow, lineage; build metadata.

    ``settings`` are the task's resolved settings (``EvalTask.recorded``), kept with the results.
    """
    import mlflow

    from cxr.lineage import git_code_version
    from cxr.storage import write_bytes, write_parquet

    out = ec.out_dir(task)
    samples_path = out / "samples.parquet"
    write_parquet(samples.to_arrow(), samples_path)
    for name, png in (previews or {}).items():
        if png:
            write_bytes(png, out / f"{name}.png")
    config = settings
    config_hash = _config_hash(config)
    code_version = git_code_version()
    train_run = ec.manifest.get("mlflow_run_id")
    experiment_id = mlflow_tracking.experiment_id(ec.storage)
    tags = {
        "dagster_run_id": context.run.run_id,
        "task": task,
        "checkpoint_id": ec.key,
        "checkpoint_hash": ec.manifest["content_hash"],
        "code_version": code_version,
    }
    if train_run:
        tags["training_run_id"] = train_run
        try:  # nest under the training run when it lives in this tracking store
            mlflow.get_run(train_run)
            tags["mlflow.parentRunId"] = train_run
        except mlflow.exceptions.MlflowException:
            context.log.warning(f"training run {train_run} is not in this MLflow store")
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"eval-{task}-{ec.key}", tags=tags
    ) as run:
        mlflow.log_params({f"eval.{k}": str(v)[:250] for k, v in config.items()})
        metrics = {
            _mlflow_name(
                task, r.method, r.metric, r.observation, f"r{r.mask_ratio:g}", r.setting
            ): float(r.value)
            for r in rows
            if r.value is not None
        }
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(samples_path), artifact_path=f"eval/{task}")
        mlflow_run_id = run.info.run_id
    info = EvalRunInfo(
        checkpoint_id=ec.key,
        task=task,
        run_id=context.run.run_id,
        checkpoint_path=str(ec.ref.path),
        checkpoint_hash=ec.manifest["content_hash"],
        checkpoint_manifest={k: v for k, v in ec.manifest.items() if k != "files"},
        eval_config=config,
        eval_config_hash=config_hash,
        code_version=code_version,
        mlflow_run_id=mlflow_run_id,
        samples_path=str(samples_path),
    )
    written = upsert_results(ec.storage.catalog(), info, rows)
    results_hash = hashlib.sha256(
        json.dumps([r.to_dict() for r in rows], sort_keys=True).encode()
    ).hexdigest()
    input_hashes = {name: content_hash_of(name, ec.storage) for name in inputs}
    stage = ec.manifest.get("stage")
    if ec.ref.origin == "published" and stage in (1, 2):
        input_hashes[f"stage{stage}_checkpoint"] = ec.manifest["content_hash"]
    lineage = record_lineage(
        context,
        ec.storage,
        [str(samples_path)],
        results_hash,
        inputs=[],
        config={**config, "checkpoint_id": ec.key, "checkpoint_hash": ec.manifest["content_hash"]},
        input_hashes=input_hashes,
    )
    shown = [
        {
            "method": r.method,
            "metric": r.metric,
            "observation": r.observation,
            "mask": f"{r.mask_ratio:g}",
            "setting": r.setting,
            "value": "-" if r.value is None else f"{r.value:.3f}",
            "95% CI": "" if r.ci_low is None else f"{r.ci_low:.3f}-{r.ci_high:.3f}",
            "n": r.n,
        }
        for r in rows
        if r.observation == "" and r.value is not None
    ]
    metadata: dict[str, Any] = {
        "checkpoint": ec.key,
        "checkpoint_path": dg.MetadataValue.path(str(ec.ref.path)),
        "checkpoint_hash": ec.manifest["content_hash"][:16],
        "rows_written": written,
        "skipped_rows": sum(1 for r in rows if not r.status.startswith("ok")),
        "samples": dg.MetadataValue.path(str(samples_path)),
        "mlflow_run_id": mlflow_run_id,
        "eval_config_hash": config_hash,
        "results": dg.MetadataValue.md(
            markdown_table(
                shown,
                ["method", "metric", "observation", "mask", "setting", "value", "95% CI", "n"],
            )
        ),
        **(extra_metadata or {}),
        **lineage,
    }
    for name, png in (previews or {}).items():
        if png:
            metadata[name] = dg.MetadataValue.md(markdown_image(png, name))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(results_hash))


def _guard(fn: Callable[[], dg.MaterializeResult], key: str, task: str) -> dg.MaterializeResult:
    from cxr.progress import PassProgress
    from evaluation.data import batch_progress

    log = dg.AssetExecutionContext.get().log.info
    try:
        with batch_progress(PassProgress(f"{task} evaluation of {key}", log)):
            return fn()
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise dg.Failure(
            description=f"{task} evaluation of checkpoint {key} failed: {exc}"
        ) from exc


_ASSET_KW = dict(
    group_name=EVAL_GROUP,
    partitions_def=checkpoints_partitions,
    kinds={"pytorch", "duckdb", "mlflow"},
)


@dg.asset(
    deps=[
        "token_shards",
        "vocabulary",
        "finding_labels",
        "image_tokenizer",
        *paths.TRAINING_POINTERS,
    ],
    description="Findings AUROC per CheXpert observation and macro, image tokens masked "
    "0-80%, linear probes on the checkpoint's hidden states (layer chosen on VALIDATE) vs a "
    "bag-of-codes floor and a pixel-blocks ceiling (block means of the VQ reconstruction); "
    "patient-bootstrap 95% CIs.",
    **_ASSET_KW,
)
def findings_eval(
    context: dg.AssetExecutionContext,
    config: FindingsEvalConfig,
    storage: StorageResource,
    mlflow_tracking: MLflowResource,
) -> dg.MaterializeResult:
    """Probe AUROC under image-token masking for one checkpoint."""

    def run() -> dg.MaterializeResult:
        from evaluation.findings import run_findings

        run, core = findings_settings(config, storage)
        ec = EvalContext(context, run, storage)
        train = ec.split("train", core.max_train_images, by_patient=True)
        validate = None  # needed only to choose the layer
        if core.layer is None:
            validate = ec.split("validate", run.max_validate_rows)
        test = ec.split("test", run.max_test_rows)
        decode = None
        if core.pixel_grid > 0:
            from evaluation.inpainting import decode_uint8
            from models.vq_tokenizer import load_checkpoint

            vq = load_checkpoint(storage.path(*paths.IMAGE_TOKENIZER_DIR), run.device).eval()

            def decode(codes):
                return decode_uint8(vq, codes, core.batch_size).numpy()

        result = run_findings(
            ec.model, ec.vocab, train, test, core, validate=validate, decode=decode
        )
        selection = result.selection
        save_layer_selection(ec, core, selection)
        from evaluation.plots import auroc_by_ratio_png, roc_curves_png

        previews = {
            "auroc_vs_mask_ratio": auroc_by_ratio_png(rows_frame(result.rows, ec.key)),
            "roc_curves": roc_curves_png(result.samples, "model", 0.0),
        }
        candidates = [
            {
                "layer": layer,
                "validate macro AUROC": "-" if value is None else f"{value:.3f}",
                "chosen": "yes" if layer == selection.layer else "",
            }
            for layer, value in sorted(selection.validate_scores.items())
        ]
        return finish(
            context,
            ec,
            "findings",
            FINDINGS.recorded(run, core),
            result.rows,
            result.samples,
            mlflow_tracking,
            ["token_shards", "vocabulary", "finding_labels"],
            previews,
            {
                "train_images": int(result.curves["train_images"][0]),
                "validate_images": selection.validate_images,
                "test_images": len(test),
                "layer": selection.layer,
                "layer_selection": selection.status,
                "layer_candidates": dg.MetadataValue.md(
                    markdown_table(candidates, ["layer", "validate macro AUROC", "chosen"])
                ),
                "uncertainty_policy": core.uncertainty_policy,
                "views": core.views,
                "test_patients_per_observation": dg.MetadataValue.md(
                    markdown_table(
                        [
                            {"observation": o, "positive patients": p, "negative patients": n}
                            for o, (p, n) in result.test_patients.items()
                        ],
                        ["observation", "positive patients", "negative patients"],
                    )
                ),
            },
        )

    return _guard(run, context.partition_key, "findings")


@dg.asset(
    deps=[
        "token_shards",
        "vocabulary",
        "image_tokenizer",
        "cxr_images",
        *paths.TRAINING_POINTERS,
    ],
    description="One-pass inpainting of masked image tokens (random / block, 20-80%), decoded "
    "by the image tokenizer: PSNR/SSIM vs the original and vs the tokenizer's reconstruction; "
    "image-blind baseline.",
    **_ASSET_KW,
)
def inpainting_eval(
    context: dg.AssetExecutionContext,
    config: InpaintingEvalConfig,
    storage: StorageResource,
    mlflow_tracking: MLflowResource,
) -> dg.MaterializeResult:
    """Inpainting PSNR/SSIM for one checkpoint."""

    def run() -> dg.MaterializeResult:
        from evaluation.data import load_pixels
        from evaluation.inpainting import positionwise_mode, run_inpainting
        from models.vq_tokenizer import load_checkpoint

        run, core = INPAINTING.settings(config)
        ec = EvalContext(context, run, storage)
        train = ec.split("train", run.max_train_rows)
        test = ec.split("test", run.max_test_rows)
        images_dir = storage.path(*paths.IMAGES_DIR)
        image_manifest = json.loads((images_dir / "_manifest.json").read_text())
        pixels = load_pixels(
            [images_dir / s["path"] for s in image_manifest["shards"]], test.image_ids
        )
        vq = load_checkpoint(storage.path(*paths.IMAGE_TOKENIZER_DIR), run.device).eval()
        result = run_inpainting(
            ec.model,
            vq,
            ec.vocab,
            test,
            pixels,
            positionwise_mode(train.codes, ec.vocab.codebook_size),
            core,
        )
        return finish(
            context,
            ec,
            "inpainting",
            INPAINTING.recorded(run, core),
            result.rows,
            result.samples,
            mlflow_tracking,
            ["token_shards", "vocabulary", "image_tokenizer", "cxr_images"],
            {"inpainting_examples": result.preview_png},
            {"test_images": len(test)},
        )

    return _guard(run, context.partition_key, "inpainting")


@dg.asset(
    # after findings_eval, whose layer choice the feature baseline reuses
    deps=[
        "token_shards",
        "vocabulary",
        "text_tokenizer",
        "findings_eval",
        *paths.TRAINING_POINTERS,
    ],
    description="Greedy report generation after the image prompt (KV cache, batched): BLEU-4, "
    "ROUGE-L, CheXpert-labeler clinical F1 (micro/macro), GREEN when a local judge is "
    "configured; nearest-TRAIN-report baselines (code histograms; model features at the layer "
    "findings chose on VALIDATE).",
    **_ASSET_KW,
)
def report_generation_eval(
    context: dg.AssetExecutionContext,
    config: ReportGenerationEvalConfig,
    storage: StorageResource,
    mlflow_tracking: MLflowResource,
) -> dg.MaterializeResult:
    """Generated reports and their scores for one checkpoint."""

    def run() -> dg.MaterializeResult:
        from evaluation.report_generation import run_report_generation
        from models.text_tokenizer import load_tokenizer

        run = REPORT_GENERATION.run_settings(config)
        ec = EvalContext(context, run, storage)
        train = ec.split("train", run.max_train_rows)
        test = ec.split("test", run.max_test_rows)
        tokenizer = load_tokenizer(storage.path(*paths.TEXT_TOKENIZER_DIR))
        layer, layer_source = chosen_layer(ec, storage)
        core = REPORT_GENERATION.core_settings(config, feature_layer=layer)

        def decode(ids: list[int]) -> str:
            return tokenizer.decode(ids, skip_special_tokens=True).strip()

        result = run_report_generation(
            ec.model,
            ec.vocab,
            decode,
            train,
            test,
            core,
        )
        examples = result.samples.filter(result.samples["method"] == "model").head(3)
        table = markdown_table(
            [
                {"generated": g[:300], "reference": r[:300]}
                for g, r in zip(examples["generated"], examples["reference"], strict=True)
            ],
            ["generated", "reference"],
        )
        return finish(
            context,
            ec,
            "report_generation",
            REPORT_GENERATION.recorded(run, core),
            result.rows,
            result.samples,
            mlflow_tracking,
            ["token_shards", "vocabulary", "text_tokenizer"],
            None,
            {
                "test_images": len(test),
                "feature_layer": layer,
                "feature_layer_source": layer_source,
                "examples": dg.MetadataValue.md(table),
            },
        )

    return _guard(run, context.partition_key, "report_generation")


@dg.asset(
    deps=["token_shards", "vocabulary", *paths.TRAINING_POINTERS],
    description="Image <-> report retrieval over TEST: Recall@1/5/10 both ways, scored by "
    "log p(report | image) minus each report's mean over TEST images (PMI), hits by study.",
    **_ASSET_KW,
)
def retrieval_eval(
    context: dg.AssetExecutionContext,
    config: RetrievalEvalConfig,
    storage: StorageResource,
    mlflow_tracking: MLflowResource,
) -> dg.MaterializeResult:
    """Retrieval recall for one checkpoint."""

    def run() -> dg.MaterializeResult:
        from evaluation.retrieval import run_retrieval

        run = RETRIEVAL.run_settings(config)
        ec = EvalContext(context, run, storage)
        core = RETRIEVAL.core_settings(config, max_text_tokens=ec.max_text_tokens)
        test = ec.split("test", run.max_test_rows)
        result = run_retrieval(ec.model, ec.vocab, test, core)
        return finish(
            context,
            ec,
            "retrieval",
            RETRIEVAL.recorded(run, core),
            result.rows,
            result.samples,
            mlflow_tracking,
            ["token_shards", "vocabulary"],
            None,
            {"test_images": len(test), "test_studies": int(result.scores.shape[1])},
        )

    return _guard(run, context.partition_key, "retrieval")


EVAL_ASSETS = [findings_eval, inpainting_eval, report_generation_eval, retrieval_eval]
