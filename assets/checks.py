"""Quality gates on the ingest assets. Blocking checks stop downstream materialization."""

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb

from assets import paths
from cxr.previews import markdown_table
from cxr.quarantine import counts_by_reason, quarantine_sources, summary_line
from pipelines.resources import MLflowResource, SourceResource, StorageResource


class DecodeRateConfig(dg.Config):
    """Threshold of the decode success check."""

    min_success_rate: float = 0.9
    """Fraction of image files (DICOM + raster) in the manifest that must end up decoded."""


def _images_glob(storage: StorageResource) -> str:
    return str(storage.path(*paths.IMAGES_DIR) / "shard-[0-9][0-9][0-9][0-9][0-9].parquet")


@dg.asset_check(asset="cxr_images", blocking=True, description="Enough image files decode.")
def decode_success_rate(config: DecodeRateConfig, storage: StorageResource) -> dg.AssetCheckResult:
    """Of the image files ingest tried to decode, the fraction that decoded.

    The description summarises the quarantine by reason (why the rest failed), passed or not.

    Denominator: image files (DICOM + raster) in the manifest, minus those set aside at the
    studies stage for non-decoding reasons (duplicate instances, missing identifiers, files no
    CSV row references). Header failures and pixel decode failures count against the rate.
    """
    manifest = storage.path(*paths.SOURCE_MANIFEST)
    rejected = storage.path(*paths.STUDIES_REJECTED)
    con = duckdb.connect()
    scanned = con.execute(
        f"""SELECT count(*) FROM read_parquet('{manifest}') WHERE kind IN ('dicom', 'raster')
              AND file_id NOT IN (SELECT file_id FROM read_parquet('{rejected}')
                                  WHERE stage = 'studies' AND file_id IS NOT NULL)"""
    ).fetchall()[0][0]
    decoded = con.execute(
        f"""SELECT count(DISTINCT si.file_id) FROM read_parquet('{_images_glob(storage)}') i
            JOIN read_parquet('{storage.path(*paths.STUDY_IMAGES)}') si USING (image_id)"""
    ).fetchall()[0][0]
    con.close()
    rate = decoded / scanned if scanned else 0.0
    passed = scanned > 0 and rate >= config.min_success_rate
    by_reason = counts_by_reason(quarantine_sources(rejected, storage.path(*paths.IMAGES_DIR)))
    if not scanned:
        verdict = "no image files were scanned"
    else:
        verdict = (
            f"{decoded} of {scanned} image files decoded ({rate:.1%}; floor "
            f"{config.min_success_rate:.0%})"
        )
    description = f"{verdict}. {summary_line(by_reason)}"
    if not passed:
        description += (
            f". Every file and its reason: {storage.path(*paths.QUARANTINE)} (DuckDB view "
            "ingest_quarantine, and the ingest_quarantine asset in the UI)"
        )
    return dg.AssetCheckResult(
        passed=passed,
        metadata={
            "image_files_attempted": scanned,
            "image_files_decoded": decoded,
            "success_rate": round(rate, 4),
            "min_success_rate": config.min_success_rate,
            "quarantined_by_reason": dg.MetadataValue.md(
                markdown_table(
                    [{"reason": r, "stage": st, "count": n} for r, st, n in by_reason],
                    ["reason", "stage", "count"],
                )
            ),
        },
        description=description,
    )


@dg.asset_check(
    asset="cxr_images",
    blocking=True,
    description="Every image shard and sidecar matches the sha256 in _manifest.json.",
)
def image_shards_match_manifest(storage: StorageResource) -> dg.AssetCheckResult:
    """Re-hash the image shard set against its manifest (a corrupt or missing file is named)."""
    from cxr.images import verify_image_shards

    try:
        manifest = verify_image_shards(storage.path(*paths.IMAGES_DIR))
    except (FileNotFoundError, ValueError) as exc:
        return dg.AssetCheckResult(passed=False, metadata={"error": str(exc)})
    return dg.AssetCheckResult(
        passed=True,
        metadata={
            "num_shards": len(manifest["shards"]),
            "num_images": manifest["num_images"],
            "content_hash": manifest["content_hash"],
        },
    )


@dg.asset_check(asset="cxr_images", blocking=True, description="No blank images in the shards.")
def no_empty_images(storage: StorageResource) -> dg.AssetCheckResult:
    """Every decoded image has contrast (pixel std >= 1 grey level) and the expected size."""
    row = (
        duckdb.connect()
        .execute(
            f"""SELECT count(*), count(*) FILTER (WHERE pixel_std < 1.0),
                   count(*) FILTER (WHERE octet_length(pixels) <> height * width),
                   min(pixel_std), max(pixel_mean)
            FROM read_parquet('{_images_glob(storage)}')"""
        )
        .fetchall()[0]
    )
    total, flat, bad_size, min_std, max_mean = row
    return dg.AssetCheckResult(
        passed=total > 0 and flat == 0 and bad_size == 0,
        metadata={
            "num_images": total,
            "num_flat": flat,
            "num_wrong_size": bad_size,
            "min_pixel_std": float(min_std or 0.0),
            "max_pixel_mean": float(max_mean or 0.0),
        },
    )


@dg.asset_check(
    asset="ingest_quarantine",
    blocking=True,
    description="Every scanned file is ingested, used as a report, or quarantined.",
)
def every_file_accounted_for(storage: StorageResource) -> dg.AssetCheckResult:
    """Ingested + reports used + quarantined = scanned, per file and per study image."""
    manifest = storage.path(*paths.SOURCE_MANIFEST)
    study_images = storage.path(*paths.STUDY_IMAGES)
    studies = storage.path(*paths.STUDIES)
    quarantine = storage.path(*paths.QUARANTINE)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW images AS SELECT * FROM read_parquet('{_images_glob(storage)}')")
    missing_files = con.execute(
        f"""WITH accounted AS (
                SELECT si.file_id FROM read_parquet('{study_images}') si
                JOIN images USING (image_id)
                UNION SELECT report_file_id FROM read_parquet('{studies}')
                      WHERE report_file_id IS NOT NULL
                UNION SELECT file_id FROM read_parquet('{quarantine}') WHERE file_id IS NOT NULL
                UNION SELECT file_id FROM read_parquet('{manifest}') WHERE kind = 'report_table')
            SELECT count(*) FROM read_parquet('{manifest}')
            WHERE file_id NOT IN (SELECT file_id FROM accounted)"""
    ).fetchall()[0][0]
    missing_images = con.execute(
        f"""SELECT count(*) FROM read_parquet('{study_images}')
            WHERE image_id NOT IN (SELECT image_id FROM images)
              AND image_id NOT IN (SELECT record_id FROM read_parquet('{quarantine}'))"""
    ).fetchall()[0][0]
    scanned = con.execute(f"SELECT count(*) FROM read_parquet('{manifest}')").fetchall()[0][0]
    ingested = con.execute("SELECT count(*) FROM images").fetchall()[0][0]
    quarantined = con.execute(f"SELECT count(*) FROM read_parquet('{quarantine}')").fetchall()[0][0]
    con.close()
    return dg.AssetCheckResult(
        passed=missing_files == 0 and missing_images == 0,
        metadata={
            "files_scanned": scanned,
            "images_ingested": ingested,
            "records_quarantined": quarantined,
            "files_unaccounted": missing_files,
            "study_images_unaccounted": missing_images,
        },
    )


@dg.asset_check(asset="splits", blocking=True, description="No patient is in two splits.")
def no_patient_in_two_splits(storage: StorageResource) -> dg.AssetCheckResult:
    """Every patient's studies share one split; every study has exactly one row."""
    splits_path = storage.path(*paths.SPLITS)
    con = duckdb.connect()
    leaking = con.execute(
        f"""SELECT count(*) FROM (SELECT patient_id FROM read_parquet('{splits_path}')
            GROUP BY patient_id HAVING count(DISTINCT split) > 1)"""
    ).fetchall()[0][0]
    duplicated = con.execute(
        f"""SELECT count(*) FROM (SELECT study_id FROM read_parquet('{splits_path}')
            GROUP BY study_id HAVING count(*) > 1)"""
    ).fetchall()[0][0]
    shared_images = con.execute(
        f"""SELECT count(*) FROM (SELECT image_id FROM
                (SELECT unnest(image_ids) AS image_id, split FROM read_parquet('{splits_path}'))
            GROUP BY image_id HAVING count(DISTINCT split) > 1)"""
    ).fetchall()[0][0]
    con.close()
    return dg.AssetCheckResult(
        passed=leaking == 0 and duplicated == 0 and shared_images == 0,
        metadata={
            "patients_in_several_splits": leaking,
            "studies_listed_twice": duplicated,
            "images_in_several_splits": shared_images,
        },
    )


class PrevalenceConfig(dg.Config):
    """Tolerance of the label prevalence check."""

    standard_errors: float = 3.0
    """Allowed deviation of a split's positive rate from the overall rate, in standard errors."""
    absolute_slack: float = 0.02
    """Extra allowed deviation on top of the standard-error band."""


@dg.asset_check(
    asset="splits",
    additional_deps=["finding_labels"],
    description="Positive-label prevalence per split is close to the overall prevalence.",
)
def label_prevalence_per_split(
    config: PrevalenceConfig, storage: StorageResource
) -> dg.AssetCheckResult:
    """WARN when a split's positive rate of an observation is off by more than the tolerance."""
    from cxr.curation import column_name
    from cxr.labeler import OBSERVATIONS
    from cxr.previews import markdown_table

    splits_path, labels_path = storage.path(*paths.SPLITS), storage.path(*paths.FINDING_LABELS)
    con = duckdb.connect()
    con.execute(
        f"""CREATE VIEW joined AS SELECT s.split, l.* FROM read_parquet('{splits_path}') s
            JOIN read_parquet('{labels_path}') l USING (study_id)"""
    )
    off = []
    for observation in OBSERVATIONS:
        col = column_name(observation)
        overall = (
            con.execute(f"SELECT avg(coalesce({col} = 1, false)::INT) FROM joined").fetchall()[0][0]
            or 0.0
        )
        per_split = con.execute(
            f"""SELECT split, count(*), avg(coalesce({col} = 1, false)::INT) FROM joined
                GROUP BY split ORDER BY split"""
        ).fetchall()
        for split, n, rate in per_split:
            tolerance = (
                config.standard_errors * (overall * (1 - overall) / max(n, 1)) ** 0.5
                + config.absolute_slack
            )
            if abs((rate or 0.0) - overall) > tolerance:
                off.append(
                    {
                        "observation": observation,
                        "split": split,
                        "n": n,
                        "rate": round(rate or 0.0, 4),
                        "overall": round(overall, 4),
                        "tolerance": round(tolerance, 4),
                    }
                )
    con.close()
    return dg.AssetCheckResult(
        passed=not off,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "num_out_of_tolerance": len(off),
            "out_of_tolerance": dg.MetadataValue.md(
                markdown_table(off, ["observation", "split", "n", "rate", "overall", "tolerance"])
            ),
        },
    )


def _tokens_glob(storage: StorageResource) -> str:
    return str(storage.path(*paths.TOKENS_DIR) / "shard-[0-9][0-9][0-9][0-9][0-9].parquet")


@dg.asset_check(
    asset="token_shards",
    blocking=True,
    description="Codes in range, every decoded image tokenized, counts and hashes match the "
    "manifest, splits agree with the split manifest.",
)
def token_shards_valid(storage: StorageResource) -> dg.AssetCheckResult:
    """The token shard set is complete, consistent and leak-free."""
    import json

    from cxr.token_shards import verify_shard_set

    tokens_dir = storage.path(*paths.TOKENS_DIR)
    problems: list[str] = []
    try:
        manifest = verify_shard_set(tokens_dir)
    except (FileNotFoundError, ValueError) as exc:
        return dg.AssetCheckResult(passed=False, metadata={"error": str(exc)})
    codebook = json.loads(storage.path(*paths.VOCABULARY).read_text())["codebook_size"]
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{_tokens_glob(storage)}')")
    rows, bad_codes, empty_codes = con.execute(
        f"""SELECT count(*),
                   count(*) FILTER (WHERE list_min(image_codes) < 0
                                    OR list_max(image_codes) >= {codebook}),
                   count(*) FILTER (WHERE len(image_codes) = 0) FROM t"""
    ).fetchall()[0]
    untokenized = con.execute(
        f"""SELECT count(*) FROM read_parquet('{_images_glob(storage)}') i
            WHERE image_id NOT IN (SELECT image_id FROM t)"""
    ).fetchall()[0][0]
    wrong_split = con.execute(
        f"""SELECT count(*) FROM t JOIN read_parquet('{storage.path(*paths.SPLITS)}') s
            USING (study_id) WHERE t.split <> s.split"""
    ).fetchall()[0][0]
    leaking = con.execute(
        """SELECT count(*) FROM
           (SELECT patient_id FROM t GROUP BY 1 HAVING count(DISTINCT split) > 1)"""
    ).fetchall()[0][0]
    con.close()
    if rows != manifest["num_rows"]:
        problems.append(f"{rows} rows but the manifest says {manifest['num_rows']}")
    if bad_codes or empty_codes:
        problems.append(f"{bad_codes} rows with codes outside [0, {codebook}), {empty_codes} empty")
    if untokenized:
        problems.append(f"{untokenized} decoded images have no token row")
    if wrong_split or leaking:
        problems.append(f"{wrong_split} rows disagree with splits; {leaking} patients leak")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "num_rows": rows,
            "rows_codes_out_of_range": bad_codes,
            "images_not_tokenized": untokenized,
            "rows_with_wrong_split": wrong_split,
            "patients_in_several_splits": leaking,
            "problems": "; ".join(problems) or "none",
        },
    )


def _stage_check(asset: str, storage: StorageResource) -> dg.AssetCheckResult:
    import json
    import math

    from models.lm_data import iter_eval_batches, shard_paths_from_manifest
    from models.lm_train import evaluate_lm, load_lm_checkpoint
    from pipelines.checkpoints.publish import verify_checkpoint

    target = json.loads(storage.path(*paths.TRAINING_POINTERS[asset]).read_text())["path"]
    try:
        manifest = verify_checkpoint(target)
    except (FileNotFoundError, ValueError) as exc:
        return dg.AssetCheckResult(passed=False, metadata={"error": str(exc)})
    model, info = load_lm_checkpoint(target)
    shards = shard_paths_from_manifest(storage.path(*paths.TOKENS_DIR))
    config = manifest["train_config"]
    val = evaluate_lm(
        model,
        iter_eval_batches(
            shards,
            info["vocab"],
            batch_size=config["batch_size"],
            max_text_tokens=config["max_text_tokens"],
            split="validate",
            max_rows=512,
        ),
        info["vocab"],
    )
    logged = manifest["val"]["loss"]
    history = info.get("metrics") or {}
    finite = all(
        math.isfinite(v)
        for v in (val["loss"], logged, *manifest["val"].values())
        if isinstance(v, float)
    )
    reproduced = abs(val["loss"] - logged) <= 1e-4 * max(1.0, abs(logged))
    return dg.AssetCheckResult(
        passed=finite and reproduced,
        metadata={
            "logged_val_loss": logged,
            "recomputed_val_loss": float(val["loss"]),
            "finite": finite,
            "last_train_loss": float(history.get("loss", float("nan"))),
        },
    )


def training_checks(asset: str) -> list[dg.AssetChecksDefinition]:
    """The two checks of a training asset: ``<asset>_reloads`` and ``<arm>_loss_went_down``."""

    @dg.asset_check(
        asset=asset,
        name=f"{asset}_reloads",
        blocking=True,
        description="The published checkpoint verifies, loads, and reproduces its logged val loss.",
    )
    def reloads(storage: StorageResource) -> dg.AssetCheckResult:
        return _stage_check(asset, storage)

    @dg.asset_check(
        asset=asset,
        name=f"{asset.removesuffix('_checkpoint')}_loss_went_down",
        description="Training losses (MLflow history) are finite and fell.",
    )
    def loss_went_down(storage: StorageResource) -> dg.AssetCheckResult:
        return _loss_went_down(asset, storage)

    return [reloads, loss_went_down]


def _loss_went_down(asset: str, storage: StorageResource) -> dg.AssetCheckResult:
    import json
    import math

    import mlflow

    from pipelines.resources import MLflowResource, use_tracking_uri

    pointer = paths.TRAINING_POINTERS[asset]
    run_id = json.loads(storage.path(*pointer).read_text())["mlflow_run_id"]
    use_tracking_uri(MLflowResource().resolved_uri(storage))
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "loss")
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    if len(values) < 2:
        return dg.AssetCheckResult(passed=False, metadata={"logged_points": len(values)})
    window = max(1, len(values) // 5)
    first, last = sum(values[:window]) / window, sum(values[-window:]) / window
    finite = all(math.isfinite(v) for v in values)
    return dg.AssetCheckResult(
        passed=finite and last < first,
        metadata={
            "first_loss": first,
            "last_loss": last,
            "logged_points": len(values),
            "finite": finite,
        },
    )


class PrivacyAuditConfig(dg.Config):
    """What the privacy audit reads back from the source, and how much it scans."""

    sample_files: int = 256
    """Source files whose headers and paths give the needles (0 = every file)."""
    min_needle_length: int = 4
    """Identifier values shorter than this are not searched for (too unspecific)."""
    binary_limit_mb: int = 256
    """Other binary files (model weights...) are scanned up to this many MiB each."""
    max_hits_shown: int = 50
    """Hits listed in the check's metadata (all are counted)."""


def _event_texts(instance: dg.DagsterInstance, run_id: str) -> Iterator[tuple[str, str]]:
    """This run's event log, the latest materialization of every asset, and the run config."""

    def text(record: object) -> str:  # serialized, with non-ASCII names in clear (not \u-escaped)
        return json.dumps(json.loads(dg.serialize_value(record)), ensure_ascii=False)

    for index, entry in enumerate(instance.all_logs(run_id)):
        yield f"run {run_id[:8]} event {index}", text(entry)
    for key in instance.get_asset_keys():
        event = instance.get_latest_materialization_event(key)
        if event is not None:
            yield f"latest materialization of {key.to_user_string()}", text(event)
    run = instance.get_run_by_id(run_id)
    if run is not None:
        yield f"run {run_id[:8]} config and tags", repr((run.run_config, run.tags))


def _mlflow_dir(mlflow_tracking: MLflowResource, storage: StorageResource) -> Path | None:
    """The local MLflow store folder (None for a tracking server)."""
    uri = mlflow_tracking.resolved_uri(storage)
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


@dg.asset_check(
    asset="token_shards",
    blocking=False,
    description="No identifier read back from the source (names, birth dates, patient ids, "
    "DICOM UIDs, accession numbers, institution, referring physician, path ids) appears in any "
    "output, the DuckDB catalog, the MLflow store or the Dagster event log.",
)
def privacy_audit(
    context: dg.AssetCheckExecutionContext,
    config: PrivacyAuditConfig,
    source: SourceResource,
    storage: StorageResource,
    mlflow_tracking: MLflowResource,
) -> dg.AssetCheckResult:
    """Scan every output of the deployment for identifiers taken from the source files."""
    from cxr.catalog import CATALOG_NAME
    from cxr.previews import markdown_table
    from cxr.privacy_audit import audit_outputs, needles_from_source

    needles, headers_read = needles_from_source(
        storage.root_path,
        source.spec().root,
        sample_size=config.sample_files,
        min_length=config.min_needle_length,
    )
    report = audit_outputs(
        needles,
        storage.root_path,
        catalog_path=storage.path(CATALOG_NAME),
        mlflow_dir=_mlflow_dir(mlflow_tracking, storage),
        events=_event_texts(context.instance, context.run.run_id),
        binary_limit_bytes=config.binary_limit_mb << 20,
    )
    context.log.info(report.summary())
    shown = [h.as_dict() for h in report.hits[: config.max_hits_shown]]
    columns = ["where", "location", "source", "needle_kind", "needle", "count"]
    return dg.AssetCheckResult(
        passed=report.passed and bool(needles),
        severity=dg.AssetCheckSeverity.ERROR if report.hits else dg.AssetCheckSeverity.WARN,
        description=None
        if needles
        else "no identifier could be read back from the source: nothing was searched for",
        metadata={
            "files_scanned": report.files_scanned,
            "tables_scanned": report.tables_scanned,
            "events_scanned": report.events_scanned,
            "source_headers_read": headers_read,
            "num_needles": len(needles),
            "needles_by_kind": dg.MetadataValue.json(report.needles_by_kind),
            "num_hits": len(report.hits),
            "hits_by_kind": dg.MetadataValue.json(report.hits_by_kind()),
            "hits": dg.MetadataValue.md(markdown_table(shown, columns) if shown else "none"),
            "not_fully_scanned": dg.MetadataValue.json(report.skipped),
        },
    )


ALL_CHECKS = [
    decode_success_rate,
    image_shards_match_manifest,
    no_empty_images,
    every_file_accounted_for,
    no_patient_in_two_splits,
    label_prevalence_per_split,
    token_shards_valid,
    *(check for asset in paths.TRAINING_POINTERS for check in training_checks(asset)),
    privacy_audit,
]
