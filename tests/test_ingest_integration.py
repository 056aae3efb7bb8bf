"""The ingest graph end to end: a generated MIMIC-style archive plus the real DICOMs, through
real Dagster materializations, a real local Ray and a real DuckDB catalog file."""

import csv
import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_setup import local_resources

from cxr.privacy import Pseudonymizer
from cxr.synthetic import generate_archive
from pipelines.definitions import defs
from pipelines.resources import (
    MLflowResource,
    RayResource,
    StorageResource,
    use_tracking_uri,
)

pytestmark = pytest.mark.integration

REAL_STUDY = "files/p19/p19999999/s59999999"
REAL_FILES = [
    "pydicom_data_RG1/RG1_UNCR.dcm",
    "pydicom_data_RG1/RG1_J2KR.dcm",
    "pydicom_data_RG1/RG1_J2KI.dcm",
    "torchxrayvision_tests/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "torchxrayvision_tests/Fake_MONOHR1.dcm",
]
TEST_SALT = "integration-salt-0123456789"
ASSET_NAMES = [
    "source_manifest",
    "studies",
    "cxr_images",
    "ingest_quarantine",
    "report_sections",
    "finding_labels",
    "splits",
    "text_tokenizer",
    "vocabulary",
    "token_shards",
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, shared_data) -> Path:
    root = tmp_path_factory.mktemp("archive")
    generate_archive(root, num_studies=24, seed=7, bad_files=True, size_scale=0.5)
    real_dir = root / REAL_STUDY
    real_dir.mkdir(parents=True)
    for index, name in enumerate(REAL_FILES):  # copies of real files, unedited
        shutil.copyfile(shared_data / "dicom" / name, real_dir / f"real-{index}.dcm")
    (root / REAL_STUDY).with_suffix(".txt").write_text(
        "FINDINGS: Real radiographs from public test collections.\nIMPRESSION: None.\n"
    )
    return root


def materialize(archive: Path, storage: Path, use_ray: bool) -> dg.ExecuteInProcessResult:
    definitions = defs()
    resources = local_resources(archive, storage, TEST_SALT)
    result = dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        resources=resources,
        # training has its own test below; everything up to the token shards runs here
        selection=dg.AssetSelection.all() - dg.AssetSelection.groups("training", "evaluation"),
        run_config={
            "ops": {
                "cxr_images": {
                    "config": {"use_ray": use_ray, "images_per_shard": 16, "image_size": 128}
                },
                # a 24-study archive carries the full set of deliberately broken files
                "cxr_images_decode_success_rate": {"config": {"min_success_rate": 0.7}},
                "image_tokenizer": {
                    "config": {
                        "preset": "debug",
                        "steps": 30,
                        "batch_size": 8,
                        "real_check_images": 8,
                    }
                },
                "text_tokenizer": {"config": {"vocab_size": 400}},
                "token_shards": {"config": {"use_ray": use_ray, "num_workers": 2}},
            }
        },
        raise_on_error=True,
    )
    assert result.success
    return result


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    # by asset key: one step (node) can materialize several assets (cxr_images + quarantine)
    events = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    assert len(events) == 1
    return {k: v.value for k, v in events[0].metadata.items()}


@pytest.fixture(scope="module")
def first_run(archive, tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage_a")
    return storage, materialize(archive, storage, use_ray=True)


def test_every_check_passes_and_counts_add_up(first_run, archive):
    _, result = first_run
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {"decode_success_rate", "no_empty_images", "every_file_accounted_for"} <= set(checks)
    blocking = {k: e for k, e in checks.items() if e.severity == dg.AssetCheckSeverity.ERROR}
    assert "label_prevalence_per_split" in checks  # WARN only: 24 studies are too few to pass
    assert all(e.passed for e in blocking.values()), {k: e.metadata for k, e in checks.items()}
    accounting = {k: v.value for k, v in checks["every_file_accounted_for"].metadata.items()}
    assert accounting["files_unaccounted"] == 0
    images = metadata(result, "cxr_images")
    with open(archive / "ground_truth" / "images.csv") as handle:
        truth = list(csv.DictReader(handle))
    assert images["num_images"] == len(truth) + len(REAL_FILES)


def test_bad_files_are_quarantined_with_their_reason(first_run, archive):
    storage, _ = first_run
    pseudo = Pseudonymizer(TEST_SALT)
    with open(archive / "ground_truth" / "bad_files.csv") as handle:
        expected = {
            pseudo.hash_id("file", row["path"]): row["expected_reason"]
            for row in csv.DictReader(handle)
        }
    assert len(expected) >= 8
    got = dict(
        duckdb.connect()
        .execute(
            f"SELECT file_id, reason FROM read_parquet('{storage}/quarantine/"
            "ingest_quarantine.parquet') WHERE file_id IS NOT NULL"
        )
        .fetchall()
    )
    assert {fid: got.get(fid) for fid in expected} == expected
    assert set(got) == set(expected), "only the deliberately bad files may be quarantined"


def test_real_dicoms_decode_exactly_and_monochrome1_is_inverted(first_run):
    storage, _ = first_run
    con = duckdb.connect()
    rows = con.execute(
        f"""SELECT i.transfer_syntax, i.photometric, i.pixels, i.height, i.width
            FROM read_parquet('{storage}/images/shard-*[0-9].parquet') i
            WHERE i.original_rows IN (1955, 1024) AND i.original_cols IN (1841, 1024)
              AND i.decoder IS NOT NULL ORDER BY i.transfer_syntax"""
    ).fetchall()
    by_syntax = {}
    for syntax, photometric, pixels, h, w in rows:
        by_syntax.setdefault(syntax, []).append(
            (photometric, np.frombuffer(pixels, np.uint8).reshape(h, w))
        )
    lossless = by_syntax["1.2.840.10008.1.2.4.90"][0][1]
    uncompressed = next(a for p, a in by_syntax["1.2.840.10008.1.2.1"] if p == "MONOCHROME1")
    np.testing.assert_array_equal(lossless, uncompressed)
    baseline = dict(by_syntax["1.2.840.10008.1.2.4.50"])
    # Fake_MONOHR1 is the SIIM image with only its header flag set to MONOCHROME1: a correct
    # chain must therefore show it inverted relative to the true MONOCHROME2 file.
    diff = np.abs(baseline["MONOCHROME1"].astype(int) - (255 - baseline["MONOCHROME2"].astype(int)))
    assert diff.mean() < 1.0
    for syntax, images in by_syntax.items():
        for photometric, image in images:
            if syntax == "1.2.840.10008.1.2.4.50" and photometric == "MONOCHROME1":
                continue  # the deliberately mislabelled file
            h, w = image.shape
            lungs = np.r_[
                image[h // 3 : 2 * h // 3, w // 8 : w // 3].ravel(),
                image[h // 3 : 2 * h // 3, 2 * w // 3 : 7 * w // 8].ravel(),
            ]
            spine = image[h // 3 : 2 * h // 3, 7 * w // 16 : 9 * w // 16]
            assert lungs.mean() < spine.mean(), (syntax, photometric)


def test_catalog_has_a_view_per_output(first_run):
    storage, _ = first_run
    con = duckdb.connect(str(storage / "catalog.duckdb"), read_only=True)
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    assert {
        "source_manifest",
        "studies",
        "study_images",
        "cxr_images",
        "ingest_quarantine",
    } <= views
    n = con.execute("SELECT count(*) FROM cxr_images").fetchall()[0][0]
    assert n > 0
    assert "private" not in " ".join(
        r[0] for r in con.execute("SELECT sql FROM duckdb_views()").fetchall()
    )


def _output_strings(storage: Path, result: dg.ExecuteInProcessResult) -> list[tuple[str, str]]:
    """Every text that leaves ingest: parquet cells (but pixels), JSON, catalog, event metadata."""
    texts = []
    for path in sorted(storage.rglob("*")):
        if not path.is_file() or "private" in path.relative_to(storage).parts:
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            keep = [c for c in table.column_names if c != "pixels"]
            texts.append((str(path), json.dumps(table.select(keep).to_pylist(), default=str)))
        else:
            texts.append((str(path), path.read_bytes().decode("latin-1")))
    for event in result.all_events:
        texts.append(("event", str(event.event_specific_data)))
    return texts


def test_no_phi_reaches_any_output(first_run, archive):
    storage, result = first_run
    phi = json.loads((archive / "ground_truth" / "phi.json").read_text())
    needles = set()
    for values in phi.values() if isinstance(phi, dict) else [phi]:
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and len(value.strip()) >= 4:
                needles.add(value.strip())
    needles |= {"CompressedSamples", "1.3.6.1.4.1.5962.1"}
    assert len(needles) > 50
    leaks = [
        (where, needle)
        for where, text in _output_strings(storage, result)
        for needle in needles
        if needle in text
    ]
    assert leaks == []


def test_rerun_is_idempotent_and_incremental(first_run, archive, tmp_path):
    storage, result = first_run
    # a fresh storage root, in-process decoding: byte-identical outputs
    fresh = materialize(archive, tmp_path / "storage_b", use_ray=False)
    for asset in ["image_tokenizer", *ASSET_NAMES]:
        key = "content_hash" if asset in ("cxr_images", "token_shards") else "sha256"
        assert metadata(fresh, asset)[key] == metadata(result, asset)[key], asset
    # the same storage root again: nothing is re-read or re-decoded, same hashes
    again = materialize(archive, storage, use_ray=False)
    manifest = metadata(again, "source_manifest")
    assert manifest["num_read"] == 0 and manifest["num_unchanged"] == manifest["num_files"]
    images = metadata(again, "cxr_images")
    assert images["num_shards_reused"] == images["num_shards"]
    assert images["content_hash"] == metadata(result, "cxr_images")["content_hash"]


def test_the_privacy_scan_would_catch_a_leak(tmp_path, first_run):
    _, result = first_run
    import pyarrow as pa

    leak = tmp_path / "leak"
    leak.mkdir()
    pq.write_table(
        pa.table({"note": ["patient HARRIS^EMMA was seen"]}), leak / "x.parquet", compression="zstd"
    )
    texts = _output_strings(leak, result)
    assert any("HARRIS^EMMA" in text for _, text in texts)


def test_lineage_walks_back_to_the_source_manifest(first_run, capsys):
    from cxr.lineage import main, upstream_chain

    storage, result = first_run
    catalog = storage / "catalog.duckdb"
    chain = upstream_chain(catalog, "ingest_quarantine")
    assert [r["asset_key"] for r in chain] == [
        "ingest_quarantine",
        "studies",
        "cxr_images",
        "source_manifest",
    ]
    assert chain[0]["content_hash"] == metadata(result, "ingest_quarantine")["sha256"]
    assert len({r["run_id"] for r in chain}) == 1  # one run made this version of each
    by_path = upstream_chain(catalog, str(storage / "curation" / "splits.parquet"))
    assert [r["asset_key"] for r in by_path] == ["splits", "studies", "source_manifest"]
    assert main([str(catalog), "splits"]) == 0
    assert "read  source_manifest" in capsys.readouterr().out
    assert main([str(catalog), "no_such_asset"]) == 1


def test_curation_assets_are_measured(first_run):
    _, result = first_run
    sections = metadata(result, "report_sections")
    assert sections["num_studies"] == 25 and sections["num_without_usable_text"] == 0
    labels = metadata(result, "finding_labels")
    assert labels["reference4_reports_exact"] == "4/4"
    assert labels["ground_truth_macro_f1"] >= 0.98
    assert 0.6 < labels["openi_macro_recall"] <= 1.0
    splits = metadata(result, "splits")
    assert sum(splits[f"studies/{s}"] for s in ("train", "validate", "test")) == 25
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["no_patient_in_two_splits"]


def test_token_shards_follow_the_contract(first_run):
    import json

    from cxr.token_shards import verify_shard_set
    from models.vocabulary import Vocabulary

    storage, result = first_run
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["token_shards_valid"].passed, checks["token_shards_valid"].metadata
    manifest = verify_shard_set(storage / "tokens")
    vocab = Vocabulary.load(storage / "tokenizers" / "vocabulary.json")
    assert manifest["vocabulary"] == json.loads(vocab.to_json())
    table = pq.read_table(storage / "tokens" / manifest["shards"][0]["path"])
    meta = table.schema.metadata
    assert (
        meta[b"chexmix.image_tokenizer_sha256"].decode()
        == metadata(result, "image_tokenizer")["sha256"]
    )
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["image_codes"]) == 64  # debug preset: 8 x 8 codes
    assert table.schema.field("image_codes").type.value_type == pa.int16()
    sequence = vocab.sequence(np.array(row["image_codes"]), np.array(row["text_ids"]))
    assert sequence[0] == vocab.image_start_id and sequence[-1] == vocab.image_start_id
    assert (
        metadata(result, "token_shards")["num_rows"] == metadata(result, "cxr_images")["num_images"]
    )


def test_a_corrupt_token_shard_is_named(first_run, tmp_path):
    from cxr.token_shards import verify_shard_set

    storage, _ = first_run
    copy = tmp_path / "tokens"
    shutil.copytree(storage / "tokens", copy)
    victim = sorted(copy.glob("shard-*.parquet"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"token shard .*{victim.name} is corrupt"):
        verify_shard_set(copy)
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        verify_shard_set(copy)


@pytest.mark.timeout(900)  # two Ray workers importing torch + diffusers on 2 cores
def test_image_tokenizer_trains_on_two_ray_workers_with_synced_codebooks(first_run):
    storage, _ = first_run
    definitions = defs()
    asset = next(a for a in definitions.assets if dg.AssetKey("image_tokenizer") in a.keys)
    result = dg.materialize(
        [asset],
        resources={
            "storage": StorageResource(root=str(storage)),
            "ray": RayResource(num_cpus=2),
            "mlflow_tracking": MLflowResource(),
        },
        run_config={
            "ops": {
                "image_tokenizer": {
                    "config": {
                        "preset": "debug",
                        "steps": 8,
                        "batch_size": 4,
                        "num_workers": 2,
                        "real_check_dir": "",
                    }
                }
            }
        },
    )
    assert result.success
    import mlflow

    run_id = metadata(result, "image_tokenizer")["mlflow_run_id"]
    use_tracking_uri(f"sqlite:///{storage / 'mlflow' / 'mlflow.db'}")
    logged = mlflow.get_run(run_id).data.metrics
    assert logged["world_size"] == 2 and logged["steps"] == 8
    assert logged["codebook_max_abs_diff_across_workers"] == 0.0


def test_two_stage_training_publishes_checked_checkpoints(first_run):
    from pipelines.checkpoints.publish import list_published, verify_checkpoint

    storage, _ = first_run
    definitions = defs()
    wanted = {"stage1_checkpoint", "stage2_checkpoint", "stage1_continued_checkpoint"}
    assets = [a for a in definitions.assets if {k.to_user_string() for k in a.keys} & wanted]
    checks = [
        c
        for c in definitions.asset_checks
        if next(iter(c.check_keys)).asset_key.to_user_string() in wanted
    ]
    stage = {
        "config": {
            "lm_preset": "debug",
            "steps": 12,
            "batch_size": 4,
            "checkpoint_every": 6,
            "use_ray": True,
        }
    }
    result = dg.materialize(
        [*assets, *checks],
        resources={
            "storage": StorageResource(root=str(storage)),
            "ray": RayResource(num_cpus=2),
            "mlflow_tracking": MLflowResource(),
        },
        run_config={
            "ops": {
                "stage1_checkpoint": stage,
                "stage2_checkpoint": stage,
                # the control arm trains in-process: the same code path without a second Ray run
                "stage1_continued_checkpoint": {"config": {**stage["config"], "use_ray": False}},
            }
        },
    )
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {
        "stage1_checkpoint_reloads",
        "stage2_checkpoint_reloads",
        "stage1_loss_went_down",
        "stage2_loss_went_down",
        "stage1_continued_checkpoint_reloads",
        "stage1_continued_loss_went_down",
    } <= set(evaluations)
    assert all(e.passed for e in evaluations.values()), {
        k: e.metadata for k, e in evaluations.items()
    }
    published = {p.parent.name: p for p in list_published(storage / "checkpoints")}
    assert sorted(published) == ["stage1", "stage1-continued", "stage2"]
    stage2 = verify_checkpoint(published["stage2"])
    assert stage2["init_checkpoint"] == str(published["stage1"])
    control = verify_checkpoint(published["stage1-continued"])
    assert control["init_checkpoint"] == str(published["stage1"])
    assert control["train_config"]["stage"] == 1 and control["arm"] == "stage1-continued"
    assert control["step"] == stage2["step"]
    assert stage2["token_shards_hash"] == metadata(result, "stage2_checkpoint")["token_shards_hash"]
    victim = next(p for p in published["stage2"].rglob("*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(ValueError, match="is corrupt"):
        verify_checkpoint(published["stage2"])
