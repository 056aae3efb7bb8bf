"""``finding_labels``: CheXpert-14 labels per study from the rule-based labeler, measured."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets import paths
from cxr.curation import (
    build_finding_labels,
    column_name,
    ground_truth_agreement,
    reference_agreement,
)
from cxr.label_eval import evaluate_openi
from cxr.labeler import DEFAULT_RULES_DIR, OBSERVATIONS, CheXpertLabeler
from cxr.previews import markdown_table
from cxr.reports import iter_openi_dir
from cxr.storage import file_sha256
from pipelines.lineage import record_lineage
from pipelines.resources import PrivacyResource, SourceResource, StorageResource

REPO_SHARED_OPENI = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "openi_iu_reports"
    / "ecgen-radiology-sample300"
)


class FindingLabelsConfig(dg.Config):
    """Labeler rules, uncertainty policy and the measurement sets."""

    uncertainty_policy: str = Field(
        default="u_ones",
        description="How uncertain (-1) becomes a training/eval target: u_ones, u_zeros, ignore",
    )
    rules_dir: str = Field(
        default="", description="CheXpert phrase/pattern folder; empty = the shipped copy"
    )
    ground_truth_labels_csv: str = Field(
        default="auto",
        description="Reference labels to MEASURE the labeler against (never used to label): a "
        "CheXpert-style CSV with study_id. 'auto' = <source root>/ground_truth/labels.csv when "
        "present (the demo archive); '' = skip.",
    )
    openi_reports_dir: str = Field(
        default="auto",
        description="Open-i XML reports to measure against curator MeSH codes. 'auto' = "
        "../shared/data/openi_iu_reports/ecgen-radiology-sample300 next to the repo when "
        "present; '' = skip.",
    )


def _agreement_table(rows: list[dict]) -> str:
    shown = [{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    return markdown_table(shown, ["observation", "support", "precision", "recall", "f1"])


@dg.asset(
    group_name="curation",
    deps=["report_sections"],
    kinds={"parquet"},
    description="Per study: the 14 CheXpert observations (1 positive, 0 negative, -1 uncertain, "
    "null not mentioned) from a port of the CheXpert labeler's rules, and target_* columns "
    "after the configured uncertainty policy. Metadata: prevalence and measured agreement.",
)
def finding_labels(
    context: dg.AssetExecutionContext,
    config: FindingLabelsConfig,
    source: SourceResource,
    storage: StorageResource,
    privacy: PrivacyResource,
) -> dg.MaterializeResult:
    """Label every study's training text into ``curation/finding_labels.parquet``."""
    rules_dir = Path(config.rules_dir) if config.rules_dir else DEFAULT_RULES_DIR
    labeler = CheXpertLabeler.from_rules_dir(rules_dir)
    out = storage.path(*paths.FINDING_LABELS)
    result = build_finding_labels(
        storage.path(*paths.REPORT_SECTIONS), out, labeler, config.uncertainty_policy
    )
    total = max(result["num_studies"], 1)
    prevalence = [
        {
            "observation": o,
            **{
                k: result["counts"][o].get(k, 0)
                for k in ("positive", "uncertain", "negative", "not_mentioned")
            },
            "positive_share": f"{result['counts'][o].get('positive', 0) / total:.1%}",
        }
        for o in OBSERVATIONS
    ]
    metadata: dict = {
        "num_studies": result["num_studies"],
        "uncertainty_policy": config.uncertainty_policy,
        "label_prevalence": dg.MetadataValue.md(
            markdown_table(
                prevalence,
                [
                    "observation",
                    "positive",
                    "uncertain",
                    "negative",
                    "not_mentioned",
                    "positive_share",
                ],
            )
        ),
    }
    reference = reference_agreement(labeler, rules_dir)
    metadata["reference4_reports_exact"] = f"{reference['reports_exact']}/{reference['reports']}"
    metadata["reference4_values_equal"] = f"{reference['values_equal']}/{reference['values']}"

    truth_csv = config.ground_truth_labels_csv
    if truth_csv == "auto":
        candidate = source.spec().root / "ground_truth" / "labels.csv"
        truth_csv = str(candidate) if candidate.exists() else ""
    if truth_csv:
        pseudo = privacy.pseudonymizer(storage)
        rows = ground_truth_agreement(
            out, Path(truth_csv), lambda raw: pseudo.hash_id("study", raw)
        )
        macro = next(r for r in rows if r["observation"] == "macro")
        metadata["ground_truth_macro_f1"] = float(macro["f1"])
        metadata["ground_truth_agreement"] = dg.MetadataValue.md(_agreement_table(rows))
        context.log.info(f"labeler vs ground truth: macro F1 {macro['f1']:.3f}")

    openi_dir = config.openi_reports_dir
    if openi_dir == "auto":
        openi_dir = str(REPO_SHARED_OPENI) if REPO_SHARED_OPENI.is_dir() else ""
    if openi_dir:
        rows, _, _ = evaluate_openi(iter_openi_dir(Path(openi_dir)), labeler)
        macro = next(r for r in rows if r["observation"] == "macro")
        metadata["openi_macro_precision"] = float(macro["precision"])
        metadata["openi_macro_recall"] = float(macro["recall"])
        metadata["openi_agreement"] = dg.MetadataValue.md(
            "Open-i reports vs curator MeSH codes (uncertain counted as positive)\n\n"
            + _agreement_table(rows)
        )

    sha = file_sha256(out)
    storage.catalog().register_views({"finding_labels": str(out)})
    lineage = record_lineage(
        context,
        storage,
        [str(out)],
        sha,
        inputs=["report_sections"],
        config={
            **config.model_dump(),
            "rules_dir": str(rules_dir),
            "label_columns": [column_name(o) for o in OBSERVATIONS],
        },
    )
    metadata.update({"path": dg.MetadataValue.path(str(out)), "sha256": sha, **lineage})
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(sha))
