"""Agreement metrics for CheXpert-style labels, and Open-i MeSH codes as silver labels.

``agreement`` compares predicted and reference label dicts per observation: positive-class
precision / recall / F1 (CheXbert's "positive vs rest") and 4-class exact-match accuracy
(positive / negative / uncertain / not mentioned), plus macro and micro rows.

``OPENI_MESH_MAP`` maps the Open-i curators' MeSH major terms (the part before the first
"/") to the 14 observations; it was built from the term frequencies of the 300-report
sample in ``shared/data/openi_iu_reports``. Decisions (with counts in that sample):

- ``normal`` (100) -> No Finding. Silver No Finding is 1 only for ``normal``.
- Cardiomegaly (26) -> Cardiomegaly; ``Cardiac Shadow/enlarged|borderline`` (2) too.
- ``Mediastinum`` (2, "prominent") -> Enlarged Cardiomediastinum. ``Shift/mediastinum``,
  ``Aorta/tortuous`` and ``Heart Atria/enlarged`` are not mapped.
- Opacity (36), Airspace Disease (15), Infiltrate (5), ``Lung Diseases, Interstitial`` (2),
  ``Markings/...interstitial`` and ``Cicatrix/lung`` (scarring; CheXpert's Lung Opacity list
  has "scar" and "interstitial marking") -> Lung Opacity. ``Density`` is not mapped (it is
  used for ribs and paratracheal densities too).
- Nodule (11), Mass (2) -> Lung Lesion. **Granulomas are not lesions**: ``Calcified
  Granuloma`` (23), ``Granuloma`` (5) and ``Granulomatous Disease`` (12) stay unmapped,
  as in the CheXpert labeler (calcified nodules are an exclusion phrase and "granuloma" is
  in its other-findings list).
- ``Pulmonary Edema`` / ``Edema`` (2) and ``Pulmonary Congestion`` (5; CheXpert reads
  vascular congestion as uncertain Edema) -> Edema.
- Consolidation (4), Pneumonia (1), Pneumothorax (4), Pleural Effusion (10) -> themselves;
  ``Pulmonary Atelectasis`` / ``Atelectasis`` (26) -> Atelectasis.
- ``Thickening/pleura`` (7) and ``Cicatrix/pleura`` (2) -> Pleural Other. Fibrosis,
  ``Costophrenic Angle/blunted`` and ``Volume Loss`` are not mapped.
- ``Fractures, Bone`` (9) -> Fracture.
- ``Catheters, Indwelling`` (10), ``Tube, Inserted`` (2), ``Medical Device`` (4),
  ``Implanted Medical Device`` (3, e.g. shoulder arthroplasty) -> Support Devices.
  ``Surgical Instruments`` (11: sternotomy wires, surgical clips) is **not** mapped: the
  CheXpert device list has no "wire"/"clip", so those are not Support Devices there.
- Everything else (emphysema, spine, aorta, diaphragm, hypoinflation, technical quality,
  ``No Indexing``...) has no CheXpert class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cxr.labeler import OBSERVATIONS, POSITIVE, UNCERTAIN, CheXpertLabeler
from cxr.reports import OpenIReport

OPENI_MESH_MAP: dict[str, str] = {
    "normal": "No Finding",
    "cardiomegaly": "Cardiomegaly",
    "mediastinum": "Enlarged Cardiomediastinum",
    "opacity": "Lung Opacity",
    "airspace disease": "Lung Opacity",
    "infiltrate": "Lung Opacity",
    "lung diseases, interstitial": "Lung Opacity",
    "nodule": "Lung Lesion",
    "mass": "Lung Lesion",
    "pulmonary edema": "Edema",
    "edema": "Edema",
    "pulmonary congestion": "Edema",
    "consolidation": "Consolidation",
    "pneumonia": "Pneumonia",
    "pulmonary atelectasis": "Atelectasis",
    "atelectasis": "Atelectasis",
    "pneumothorax": "Pneumothorax",
    "pleural effusion": "Pleural Effusion",
    "fractures, bone": "Fracture",
    "catheters, indwelling": "Support Devices",
    "tube, inserted": "Support Devices",
    "medical device": "Support Devices",
    "implanted medical device": "Support Devices",
}
"""MeSH major term (lower case, before the first "/") -> observation."""

OPENI_MESH_QUALIFIED: dict[tuple[str, str], str] = {
    ("cardiac shadow", "enlarged"): "Cardiomegaly",
    ("cardiac shadow", "borderline"): "Cardiomegaly",
    ("markings", "interstitial"): "Lung Opacity",
    ("cicatrix", "lung"): "Lung Opacity",
    ("cicatrix", "pleura"): "Pleural Other",
    ("thickening", "pleura"): "Pleural Other",
}
"""(term, qualifier) -> observation, for terms that map only with that qualifier."""

METRIC_KEYS = ("observation", "n", "support", "tp", "fp", "fn", "precision", "recall", "f1")


def mesh_observations(code: str) -> set[str]:
    """Observations one MeSH code (``Opacity/lung/base/left``) maps to (maybe none)."""
    parts = [p.strip().lower() for p in code.split("/")]
    term, qualifiers = parts[0], set(parts[1:])
    out = {OPENI_MESH_MAP[term]} if term in OPENI_MESH_MAP else set()
    out |= {obs for (t, q), obs in OPENI_MESH_QUALIFIED.items() if t == term and q in qualifiers}
    return out


def openi_silver_labels(report: OpenIReport) -> dict[str, float | None]:
    """Silver labels from the curators' MeSH major codes: 1.0 for mapped terms, else None."""
    labels: dict[str, float | None] = dict.fromkeys(OBSERVATIONS)
    for code in report.mesh_major:
        for obs in mesh_observations(code):
            labels[obs] = POSITIVE
    return labels


def _is_positive(value: float | None, uncertain_as_positive: bool) -> bool:
    return value == POSITIVE or (uncertain_as_positive and value == UNCERTAIN)


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def agreement(
    pred: Sequence[dict[str, float | None]],
    truth: Sequence[dict[str, float | None]],
    observations: Sequence[str] = OBSERVATIONS,
    uncertain_as_positive: bool = False,
) -> list[dict]:
    """Per-observation agreement of predicted with reference labels.

    Args:
        pred: Predicted label dicts (1.0 / 0.0 / -1.0 / None per observation).
        truth: Reference label dicts, same order and length.
        observations: Which observations to score.
        uncertain_as_positive: Count -1 as positive on both sides for precision / recall.

    Returns:
        One row per observation with ``n``, ``support`` (reference positives), ``tp``,
        ``fp``, ``fn``, ``precision``, ``recall``, ``f1`` (positive class; NaN when
        undefined) and ``accuracy`` (exact match over the 4 classes), then a ``macro``
        row (mean over observations with support > 0; accuracy over all) and a ``micro``
        row (pooled counts).

    Raises:
        ValueError: Different lengths.
    """
    if len(pred) != len(truth):
        raise ValueError(f"{len(pred)} predictions for {len(truth)} references")
    rows = []
    for obs in observations:
        tp = fp = fn = exact = 0
        for p, t in zip(pred, truth, strict=True):
            pv, tv = p.get(obs), t.get(obs)
            pp = _is_positive(pv, uncertain_as_positive)
            tpos = _is_positive(tv, uncertain_as_positive)
            tp += pp and tpos
            fp += pp and not tpos
            fn += tpos and not pp
            exact += pv == tv
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        rows.append(
            {
                "observation": obs,
                "n": len(pred),
                "support": tp + fn,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "accuracy": _ratio(exact, len(pred)),
            }
        )
    scored = [r for r in rows if r["support"] > 0]

    def _mean(key: str, items: list[dict]) -> float:
        values = [r[key] for r in items if r[key] == r[key]]  # NaN-safe
        return sum(values) / len(values) if values else float("nan")

    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    rows.append(
        {
            "observation": "macro",
            "n": len(pred),
            "support": sum(r["support"] for r in rows),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": _mean("precision", scored),
            "recall": _mean("recall", scored),
            "f1": _mean("f1", scored),
            "accuracy": _mean("accuracy", rows),
        }
    )
    rows.append(
        {
            "observation": "micro",
            "n": len(pred),
            "support": tp + fn,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": rows[-1]["accuracy"],
        }
    )
    return rows


def evaluate_openi(
    reports: Iterable[OpenIReport], labeler: CheXpertLabeler
) -> tuple[list[dict], list[dict[str, float | None]], list[dict[str, float | None]]]:
    """Labels Open-i FINDINGS + IMPRESSION text and scores it against the MeSH silver labels.

    Uncertain predictions count as positive here (the curators code hedged findings too);
    only the positive class is meaningful, since MeSH codes carry no negatives.

    Returns:
        (agreement rows, predictions, silver labels).
    """
    preds, silver = [], []
    for report in reports:
        text, _ = report.training_text()
        preds.append(labeler.label(text))
        silver.append(openi_silver_labels(report))
    return agreement(preds, silver, uncertain_as_positive=True), preds, silver


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Plain-text table of metric rows (floats with 3 decimals)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "  nan" if value != value else f"{value:.3f}"
        return str(value)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)
