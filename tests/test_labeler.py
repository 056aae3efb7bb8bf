"""Rule-based CheXpert labeler: sentence rules, reference reports, policies and Open-i agreement."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from cxr.label_eval import (
    OPENI_MESH_MAP,
    agreement,
    evaluate_openi,
    format_table,
    mesh_observations,
    openi_silver_labels,
)
from cxr.labeler import (
    OBSERVATIONS,
    PATTERN_CONTEXT_LEMMAS,
    CheXpertLabeler,
    apply_uncertainty_policy,
    pattern_lemmas,
    split_sentences,
    trigger_vocabulary,
)
from cxr.reports import iter_openi_dir, parse_openi_xml

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RULES = SHARED / "chexpert_labeler_rules"
OPENI = SHARED / "openi_iu_reports" / "ecgen-radiology-sample300"

pytestmark = pytest.mark.skipif(not RULES.is_dir(), reason="CheXpert rules not present")

EC, CM, LO, LL = "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion"
ED, CO, PN, AT = "Edema", "Consolidation", "Pneumonia", "Atelectasis"
PTX, PE, PO, FX, SD, NF = (
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)


@pytest.fixture(scope="module")
def labeler() -> CheXpertLabeler:
    return CheXpertLabeler.from_rules_dir(RULES)


# (sentence, {observation: expected value}); observations not listed are not checked.
CASES = [
    # negation
    ("No pleural effusion.", {PE: 0.0}),
    ("There is no pneumothorax.", {PTX: 0.0}),
    ("Without evidence of pneumothorax.", {PTX: 0.0}),
    ("No evidence of pneumonia.", {PN: 0.0}),
    ("No pleural effusion or pneumothorax.", {PE: 0.0, PTX: 0.0}),
    ("No edema or pneumonia.", {ED: 0.0, PN: 0.0}),
    ("No focal consolidation, pleural effusion, or pneumothorax.", {CO: 0.0, PE: 0.0, PTX: 0.0}),
    ("No focal consolidation, large pleural effusion, or pneumothorax.", {PE: 0.0, PTX: 0.0}),
    ("Cardiomegaly without overt edema.", {CM: 1.0, ED: 0.0}),
    ("Pneumothorax is not seen.", {PTX: 0.0}),
    ("The pneumothorax has resolved.", {PTX: 0.0}),
    ("Interval resolution of the right pleural effusion.", {PE: 0.0}),
    ("The right chest tube has been removed.", {SD: 0.0}),
    ("Negative for pneumothorax.", {PTX: 0.0}),
    # scope stops at clause and sentence boundaries
    ("No pneumothorax, but there is a small left pleural effusion.", {PTX: 0.0, PE: 1.0}),
    ("No pneumothorax. Small left pleural effusion.", {PTX: 0.0, PE: 1.0}),
    ("No pneumothorax; small left pleural effusion.", {PTX: 0.0, PE: 1.0}),
    ("No effusion, however there is mild atelectasis.", {PE: 0.0, AT: 1.0}),
    ("No pneumothorax, small left effusion.", {PTX: 0.0, PE: 1.0}),
    ("No change in the small left pleural effusion.", {PE: 1.0}),
    ("Left lower lobe atelectasis. No pneumothorax.", {AT: 1.0, PTX: 0.0}),
    # uncertainty (pre-negation first, then negation, then post-negation)
    ("Cannot exclude pneumonia.", {PN: -1.0}),
    ("Pneumonia cannot be excluded.", {PN: -1.0}),
    ("Pneumonia is not excluded.", {PN: -1.0}),
    ("No new consolidation.", {CO: -1.0}),
    ("Opacity may represent atelectasis.", {LO: 1.0, AT: -1.0}),
    ("Possible small left pleural effusion.", {PE: -1.0}),
    ("Questionable right lower lobe consolidation.", {CO: -1.0}),
    ("Likely atelectasis.", {AT: -1.0}),
    ("Findings suggestive of pneumonia.", {PN: -1.0}),
    ("Increased opacity at the right base concerning for pneumonia.", {LO: 1.0, PN: -1.0}),
    ("Atelectasis versus pneumonia.", {AT: -1.0, PN: -1.0}),
    ("Atelectasis or consolidation.", {AT: -1.0, CO: -1.0}),
    ("Possible 1.5 cm nodule in the left upper lobe.", {LL: -1.0}),
    ("Pulmonary vascular congestion.", {ED: -1.0}),
    ("Borderline heart size.", {CM: -1.0}),
    ("The heart size is stable.", {CM: -1.0}),
    ("Stable mild cardiomegaly.", {CM: 1.0}),
    ("Mild pulmonary edema could be present.", {ED: -1.0}),
    # mention stems and exclusions
    ("Atelectatic changes at the left base.", {AT: 1.0}),
    ("Bibasilar opacities.", {LO: 1.0}),
    ("Persistent left lower lobe collapse.", {AT: 1.0}),
    ("Right hydropneumothorax.", {PTX: 1.0}),
    ("Calcified nodule in the right upper lobe.", {LL: None}),
    ("Massive right pleural effusion.", {LL: None, PE: 1.0}),
    ("Small pericardial effusion.", {PE: None}),
    ("Pleural scarring at the apices.", {LO: None}),
    ("Plate-like atelectasis at the left base.", {AT: 1.0, SD: None}),
    ("History of tuberculosis.", {SD: None}),
    ("Catheter tip in the right heart.", {CM: None, SD: 1.0}),
    # heart size conventions
    ("Heart size is normal.", {CM: 0.0}),
    ("Normal heart size.", {CM: 0.0}),
    ("The cardiac silhouette is normal.", {CM: 0.0}),
    ("The heart is normal in size.", {CM: 0.0}),
    ("Heart size is at the upper limits of normal.", {CM: 0.0}),
    ("The heart is not enlarged.", {CM: 0.0}),
    ("The heart is enlarged.", {CM: 1.0}),
    ("The cardiac silhouette is moderately enlarged.", {CM: 1.0}),
    ("Heart size, mediastinal contour, and pulmonary vascularity are normal.", {CM: 0.0, EC: 0.0}),
    ("The cardiomediastinal silhouette is normal.", {EC: 0.0, CM: None}),
    ("Enlarged cardiomediastinal silhouette.", {EC: 1.0}),
    ("The mediastinum is widened.", {EC: 1.0}),
    ("Mediastinal contours are within normal limits.", {EC: 0.0}),
    ("Congestive heart failure.", {ED: 1.0, CM: -1.0}),
    # other observations
    ("Endotracheal tube terminates 4 cm above the carina.", {SD: 1.0, NF: 1.0}),
    ("Left PICC line tip in the SVC.", {SD: 1.0}),
    ("Nondisplaced fracture of the left 6th rib.", {FX: 1.0}),
    ("No displaced rib fracture.", {FX: 0.0}),
    ("Right pleural thickening.", {PO: 1.0}),
    ("Findings are consistent with mild pulmonary edema.", {ED: 1.0}),
    ("Patchy airspace disease in the lingula.", {LO: 1.0}),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:50] for c in CASES])
def test_sentence_rules(labeler, text, expected):
    labels = labeler.label(text)
    got = {obs: labels[obs] for obs in expected}
    assert got == expected, [
        (m.observation, m.text, m.value, m.rule) for m in labeler.mentions(text)
    ]


def test_output_keys_and_order(labeler):
    labels = labeler.label("Small left pleural effusion.")
    assert tuple(labels) == OBSERVATIONS
    assert OBSERVATIONS[0] == NF and OBSERVATIONS[-1] == SD and len(OBSERVATIONS) == 14
    assert labeler.label_many(["No effusion.", "Effusion."]) == [
        labeler.label("No effusion."),
        labeler.label("Effusion."),
    ]


def _value(cell: str) -> float | None:
    return float(cell) if cell.strip() else None


def test_reference_reports_match_exactly(labeler):
    with (RULES / "labeled_reports.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with (RULES / "sample_reports.csv").open(newline="", encoding="utf-8") as handle:
        samples = [row[0] for row in csv.reader(handle)]
    assert len(rows) == 4 and samples == [row["Reports"] for row in rows]
    for row in rows:
        truth = {obs: _value(row[obs]) for obs in OBSERVATIONS}
        assert labeler.label(row["Reports"]) == truth, row["Reports"]


@pytest.mark.parametrize(
    ("text", "no_finding"),
    [
        ("No acute cardiopulmonary process.", 1.0),
        ("", 1.0),  # nothing mentioned: the official labeler says No Finding
        ("Heart size is normal. No effusion.", 1.0),
        ("Endotracheal tube in standard position. Lungs are clear.", 1.0),  # devices don't count
        ("Small left pleural effusion.", None),
        ("Possible pneumonia.", None),  # uncertain counts as a finding
        ("Mild emphysema.", None),  # the other-findings list (no_finding.txt) counts too
        ("Calcified granuloma in the left upper lobe.", None),
        ("No emphysema.", 1.0),
    ],
)
def test_no_finding_rule(labeler, text, no_finding):
    assert labeler.label(text)[NF] == no_finding


def test_no_finding_is_never_zero(labeler):
    for text, _ in CASES:
        assert labeler.label(text)[NF] in (1.0, None)


def test_uncertainty_policies():
    labels = {NF: None, CM: -1.0, PE: 1.0, PTX: 0.0, AT: None}
    assert apply_uncertainty_policy(labels, "u_ones") == {
        NF: None,
        CM: 1.0,
        PE: 1.0,
        PTX: 0.0,
        AT: None,
    }
    assert apply_uncertainty_policy(labels, "u_zeros") == {
        NF: None,
        CM: 0.0,
        PE: 1.0,
        PTX: 0.0,
        AT: None,
    }
    assert apply_uncertainty_policy(labels, "ignore") == {
        NF: None,
        CM: None,
        PE: 1.0,
        PTX: 0.0,
        AT: None,
    }
    assert labels[CM] == -1.0  # input untouched
    with pytest.raises(ValueError, match="unknown uncertainty policy"):
        apply_uncertainty_policy(labels, "u_maybe")


def test_from_rules_dir_default_and_missing(tmp_path):
    default = CheXpertLabeler.from_rules_dir()
    assert default.label("Cardiomegaly.")[CM] == 1.0
    with pytest.raises(FileNotFoundError):
        CheXpertLabeler.from_rules_dir(tmp_path)
    with pytest.raises(ValueError, match="unknown observations"):
        CheXpertLabeler({"Bogus": ["x"]})


def test_sentence_splitting_keeps_decimals_and_numbered_items():
    text = "1. Left effusion measuring 2.5 cm. Right effusion is also present.\n\n2. Cardiomegaly."
    assert split_sentences(text) == [
        "1.",
        "Left effusion measuring 2.5 cm.",
        "Right effusion is also present.",
        "2.",
        "Cardiomegaly.",
    ]


def test_every_pattern_file_lemma_is_a_trigger_or_documented_context():
    lemmas = pattern_lemmas(RULES)
    assert {"cannot", "exclude", "new"} <= lemmas["pre"]
    assert {"normal", "unremarkable", "without", "resolve"} <= lemmas["neg"]
    assert {"possible", "may", "stable"} <= lemmas["post"]
    vocabulary = trigger_vocabulary()
    for stage, names in lemmas.items():
        for lemma in names - PATTERN_CONTEXT_LEMMAS[stage]:
            stem = lemma.rstrip(".*").split(".")[0]
            assert stem in vocabulary[stage], (stage, lemma)


# ------------------------------------------------------------------ metrics
def test_agreement_counts_and_macro_rows():
    truth = [{CM: 1.0, PE: 0.0}, {CM: None, PE: 1.0}, {CM: -1.0, PE: 1.0}]
    pred = [{CM: 1.0, PE: None}, {CM: 1.0, PE: 1.0}, {CM: -1.0, PE: 0.0}]
    rows = {r["observation"]: r for r in agreement(pred, truth, observations=(CM, PE))}
    assert (rows[CM]["tp"], rows[CM]["fp"], rows[CM]["fn"]) == (1, 1, 0)
    assert rows[CM]["precision"] == 0.5 and rows[CM]["recall"] == 1.0
    assert rows[CM]["accuracy"] == pytest.approx(2 / 3)
    assert (rows[PE]["tp"], rows[PE]["fp"], rows[PE]["fn"]) == (1, 0, 1)
    assert rows[PE]["f1"] == pytest.approx(2 / 3)
    assert rows["macro"]["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert rows["micro"]["tp"] == 2
    loose = {r["observation"]: r for r in agreement(pred, truth, (CM,), uncertain_as_positive=True)}
    assert (loose[CM]["tp"], loose[CM]["fp"], loose[CM]["fn"]) == (2, 1, 0)
    empty = {r["observation"]: r for r in agreement([{}], [{}], observations=(CM,))}
    assert math.isnan(empty[CM]["precision"]) and empty[CM]["support"] == 0
    with pytest.raises(ValueError):
        agreement([{}], [])
    assert "precision" in format_table(list(rows.values()), ["observation", "precision"])


@pytest.mark.parametrize(
    ("code", "observations"),
    [
        ("normal", {NF}),
        ("Cardiomegaly/borderline", {CM}),
        ("Opacity/lung/base/left/mild", {LO}),
        ("Airspace Disease/lung/lingula", {LO}),
        ("Pulmonary Atelectasis/base/left", {AT}),
        ("Calcified Granuloma/lung/upper lobe/right", set()),
        ("Granulomatous Disease", set()),
        ("Nodule/lung/apex/right", {LL}),
        ("Thickening/pleura/apex/left", {PO}),
        ("Cicatrix/lung/base/left", {LO}),
        ("Cicatrix/pleura/apex/left", {PO}),
        ("Catheters, Indwelling/right", {SD}),
        ("Surgical Instruments/mediastinum", set()),
        ("Pulmonary Congestion", {ED}),
        ("Fractures, Bone/ribs/left", {FX}),
        ("Thoracic Vertebrae/degenerative", set()),
    ],
)
def test_mesh_mapping(code, observations):
    assert mesh_observations(code) == observations
    assert set(OPENI_MESH_MAP.values()) <= set(OBSERVATIONS)


# ------------------------------------------------------------------ Open-i agreement floors
requires_openi = pytest.mark.skipif(not OPENI.is_dir(), reason="Open-i sample not present")

# Measured on the 300-report sample (FINDINGS + IMPRESSION, uncertain as positive):
# observation: (support, precision, recall). Floors are the measurement minus 0.05.
MEASURED = {
    NF: (100, 0.783, 0.940),
    CM: (27, 0.794, 1.000),
    LO: (65, 0.985, 1.000),
    AT: (26, 0.788, 1.000),
    PE: (10, 0.909, 1.000),
    LL: (13, 0.667, 0.769),
}


@requires_openi
def test_openi_silver_labels():
    report = parse_openi_xml(OPENI / "1.xml")
    silver = openi_silver_labels(report)
    assert silver[NF] == 1.0 and all(silver[o] is None for o in OBSERVATIONS[1:])


@requires_openi
def test_openi_agreement_stays_above_measured_floors(labeler):
    rows, preds, silver = evaluate_openi(iter_openi_dir(OPENI), labeler)
    assert len(preds) == len(silver) == 300
    by_obs = {r["observation"]: r for r in rows}
    for obs, (support, precision, recall) in MEASURED.items():
        row = by_obs[obs]
        assert row["support"] == support, obs
        assert row["precision"] >= precision - 0.05, (obs, row)
        assert row["recall"] >= recall - 0.05, (obs, row)
    assert by_obs["micro"]["f1"] >= 0.82 - 0.05
