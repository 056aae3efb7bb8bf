"""Report grammar for the synthetic archive, with CheXpert labels that agree with the text.

Every sentence is built together with the observations it mentions and their polarity, and the
study's labels are aggregated from exactly those sentences the way the CheXpert labeler
aggregates mentions (positive beats uncertain beats negative; No Finding = 1 when no pathology
other than Support Devices is positive or uncertain). The wording sticks to the CheXpert mention
phrases, puts uncertainty cues ("possible", "questionable", "cannot exclude") before the
mention, negates one observation per clause (apart from the classic "no pleural effusion or
pneumothorax"), and keeps finding words out of INDICATION and COMPARISON, so that a rule-based
labeler reads the same labels whether it parses the whole report or only the impression.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cxr.observations import OBSERVATIONS

PATHOLOGIES: tuple[str, ...] = OBSERVATIONS[1:-1]
"""Observations that rule out No Finding when positive or uncertain."""

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

EC, CM, LO, LL = "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion"
ED, CO, PN, AT = "Edema", "Consolidation", "Pneumonia", "Atelectasis"
PTX, PE, PO, FX, SD = (
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# Relative frequency of each observation among abnormal studies.
_FINDING_WEIGHTS: dict[str, float] = {
    PE: 0.12,
    SD: 0.10,
    CM: 0.10,
    AT: 0.09,
    LO: 0.09,
    ED: 0.08,
    PN: 0.08,
    CO: 0.07,
    PTX: 0.07,
    LL: 0.07,
    EC: 0.06,
    FX: 0.05,
    PO: 0.05,
}
_DEVICES = ("ett", "ng", "picc", "pacemaker", "chest_tube")
_PARENCHYMAL = frozenset({LO, LL, ED, CO, PN, AT})
_ORDINALS = {3: "3rd", 4: "4th", 5: "5th", 6: "6th", 7: "7th", 8: "8th", 9: "9th"}


@dataclass(frozen=True)
class Finding:
    """One finding of a study, as the report states it and the phantom draws it.

    Attributes:
        observation: CheXpert observation name.
        certainty: ``"positive"`` or ``"uncertain"``.
        side: Patient side: ``"left"``, ``"right"`` or ``"bilateral"``.
        severity: 0 (minimal) to 1 (large); drives both the wording and the drawing.
        zone: ``"upper"``, ``"middle"`` or ``"lower"`` lung zone.
        device: Support device kind (``"ett"``, ``"ng"``, ``"picc"``, ``"pacemaker"``,
            ``"chest_tube"``); empty for other observations.
        rib: Rib number for fractures.
        size_cm: Diameter for lung lesions.
        seed: Placement seed for the phantom.
    """

    observation: str
    certainty: str = "positive"
    side: str = "right"
    severity: float = 0.5
    zone: str = "lower"
    device: str = ""
    rib: int = 6
    size_cm: float = 1.5
    seed: int = 0

    @property
    def label(self) -> float:
        """The CheXpert value this finding gives its observation (1 or -1)."""
        return POSITIVE if self.certainty == "positive" else UNCERTAIN


@dataclass(frozen=True)
class Sentence:
    """A report sentence and the (observation, value) pairs a labeler should read in it."""

    text: str
    mentions: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class StudyReport:
    """A generated free-text report with its ground truth.

    Attributes:
        text: The report, MIMIC-CXR style.
        labels: Observation -> 1.0 / 0.0 / -1.0, or None when not mentioned.
        findings: The findings the report states (what the phantom should draw).
        has_findings_section: False for impression-only reports.
        has_wet_read: True when a WET READ block precedes the final report.
    """

    text: str
    labels: dict[str, float | None]
    findings: tuple[Finding, ...]
    has_findings_section: bool = True
    has_wet_read: bool = False


@dataclass(frozen=True)
class ExamInfo:
    """What was acquired, for the EXAMINATION / TECHNIQUE lines.

    Attributes:
        frontal: ``"PA"`` or ``"AP"``.
        lateral: Whether a lateral view was acquired too.
        sex: ``"M"`` or ``"F"`` (for the indication).
        has_prior: Whether the patient had an earlier study (for COMPARISON).
    """

    frontal: str = "PA"
    lateral: bool = True
    sex: str = "F"
    has_prior: bool = False


def sample_findings(rng: np.random.Generator, normal_fraction: float = 0.35) -> tuple[Finding, ...]:
    """Draws the findings of one study: none (a normal study) or 1-3 distinct observations."""
    if rng.random() < normal_fraction:
        return ()
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.33, 0.17]))
    names = list(_FINDING_WEIGHTS)
    weights = np.array([_FINDING_WEIGHTS[n] for n in names])
    chosen = rng.choice(len(names), size=count, replace=False, p=weights / weights.sum())
    findings = []
    for index in sorted(int(i) for i in chosen):
        findings.append(_sample_one(names[index], rng))
    return tuple(findings)


def _sample_one(observation: str, rng: np.random.Generator) -> Finding:
    """Draws the attributes (side, zone, severity...) of one finding."""
    uncertain = observation != SD and rng.random() < 0.2
    severity = float(rng.uniform(0.15, 0.45) if uncertain else rng.uniform(0.2, 1.0))
    side = str(rng.choice(["left", "right"]))
    zone = str(rng.choice(["upper", "middle", "lower"], p=[0.25, 0.25, 0.5]))
    device = ""
    if observation in (PE, AT, PO) and rng.random() < 0.3:
        side = "bilateral"
    if observation in (CO, PN, LO) and rng.random() < 0.15:
        side = "bilateral"
    if observation in (AT, PE) or side == "bilateral":
        zone = "lower"
    if observation == PTX:
        zone = "upper"
    if observation == SD:
        device = str(rng.choice(_DEVICES, p=[0.3, 0.2, 0.25, 0.15, 0.1]))
        side = "left" if device == "pacemaker" else side
    return Finding(
        observation=observation,
        certainty="uncertain" if uncertain else "positive",
        side=side,
        severity=round(severity, 3),
        zone=zone,
        device=device,
        rib={"upper": 4, "middle": 6, "lower": 8}[zone] + int(rng.integers(-1, 2)),
        size_cm=_lesion_size(rng),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def _lesion_size(rng: np.random.Generator) -> float:
    """Lesion diameter in cm: mostly nodules (< 3 cm), sometimes masses."""
    size = rng.uniform(0.6, 2.6) if rng.random() < 0.8 else rng.uniform(3.1, 5.0)
    return round(float(size), 1)


# --------------------------------------------------------------------------------------------
# Wording helpers


def _sev(f: Finding, scale: str = "size") -> str:
    """Severity adjective: small/moderate/large (size) or mild/moderate/severe (grade)."""
    words = {
        "size": ("small", "moderate", "large"),
        "grade": ("mild", "moderate", "severe"),
        "atel": ("minimal", "mild", "moderate"),
        "opacity": ("subtle", "patchy", "confluent"),
    }[scale]
    if f.certainty == "uncertain":
        return {"size": "small", "grade": "mild", "atel": "minimal", "opacity": "subtle"}[scale]
    return words[0] if f.severity < 0.4 else words[1] if f.severity < 0.75 else words[2]


def _adverb(f: Finding) -> str:
    """Severity adverb (mildly / moderately / markedly)."""
    return {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}[_sev(f, "grade")]


def _where(f: Finding, rng: np.random.Generator) -> tuple[str, str]:
    """(prepositional location phrase, adjectival location) for a parenchymal finding."""
    side = f.side
    if side == "bilateral":
        return str(rng.choice(["at both lung bases", "in both lower lobes"])), "bibasilar"
    if f.zone == "lower":
        options = [
            (f"in the {side} lower lobe", f"{side} lower lobe"),
            (f"at the {side} lung base", f"{side} basilar"),
            (f"at the {side} base", f"{side} basilar"),
        ]
    elif f.zone == "middle":
        options = [(f"in the {side} mid lung", f"{side} mid lung")]
        options.append(
            ("in the right middle lobe", "right middle lobe")
            if side == "right"
            else ("in the lingula", "lingular")
        )
    else:
        options = [
            (f"in the {side} upper lobe", f"{side} upper lobe"),
            (f"in the {side} upper lung", f"{side} upper lung"),
        ]
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    """Capitalises the first letter only."""
    return text[:1].upper() + text[1:]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """Uniform choice that returns a plain str."""
    return options[int(rng.integers(len(options)))]


# --------------------------------------------------------------------------------------------
# Sentences per observation


def finding_sentence(
    f: Finding,
    rng: np.random.Generator,
    impression: bool = False,
    others: frozenset[str] = frozenset(),
) -> Sentence:
    """A sentence stating ``f`` (with its certainty); short forms when ``impression``.

    ``others`` are the study's other stated observations: a sentence may also assert a
    companion observation (consolidation or opacity "consistent with pneumonia") only when
    the study does not state that observation itself.
    """
    obs, unc = f.observation, f.certainty == "uncertain"
    label = f.label
    extra: tuple[tuple[str, float], ...] = ()
    loc, locadj = _where(f, rng)
    side, bilateral = f.side, f.side == "bilateral"
    if obs == PE:
        sev = _sev(f)
        if unc:
            text = (
                "Possible small bilateral pleural effusions."
                if bilateral
                else _pick(
                    rng,
                    [
                        f"Possible {sev} {side} pleural effusion.",
                        f"Questionable {sev} {side} pleural effusion.",
                        f"Cannot exclude a {sev} {side} pleural effusion.",
                    ],
                )
            )
        elif bilateral:
            text = _pick(
                rng,
                [f"{_cap(sev)} bilateral pleural effusions."]
                + ([] if impression else [f"There are {sev} bilateral pleural effusions."]),
            )
        elif impression:
            text = f"{_cap(sev)} {side} pleural effusion."
        else:
            text = _pick(
                rng,
                [
                    f"{_cap(sev)} {side} pleural effusion.",
                    f"There is a {sev} {side} pleural effusion.",
                    f"A {sev} layering {side} pleural effusion is present.",
                    f"A {sev} {side} pleural effusion is seen.",
                ],
            )
    elif obs == PTX:
        sev = _sev(f)
        if unc:
            text = _pick(
                rng,
                [
                    f"Possible tiny {side} apical pneumothorax.",
                    f"Questionable small {side} apical pneumothorax.",
                ],
            )
        elif impression:
            text = f"{_cap(sev)} {side} pneumothorax."
        else:
            text = _pick(
                rng,
                [
                    f"{_cap(sev)} {side} apical pneumothorax.",
                    f"There is a {sev} {side} pneumothorax.",
                    f"A {sev} {side}-sided pneumothorax is present.",
                ],
            )
    elif obs == CM:
        sev = _sev(f, "grade")
        if unc:
            text = _pick(
                rng,
                ["Possible mild cardiomegaly.", "Questionable mild cardiomegaly."],
            )
        elif impression:
            text = _pick(rng, [f"{_cap(sev)} cardiomegaly.", "Cardiomegaly."])
        else:
            text = _pick(
                rng,
                [
                    f"{_cap(sev)} cardiomegaly.",
                    f"The heart is {_adverb(f)} enlarged.",
                    f"There is {sev} cardiomegaly.",
                    f"The cardiac silhouette is {_adverb(f)} enlarged.",
                    f"{_cap(sev)} enlargement of the cardiac silhouette.",
                ],
            )
    elif obs == EC:
        if unc:
            text = _pick(
                rng,
                [
                    "Possible widened mediastinum.",
                    "Questionable widened mediastinum.",
                    "Cannot exclude a widened mediastinum.",
                ],
            )
        elif impression:
            text = _pick(rng, ["Widened mediastinum.", "Enlarged cardiomediastinal silhouette."])
        else:
            text = _pick(
                rng,
                [
                    "The mediastinum is widened.",
                    "The cardiomediastinal silhouette is enlarged.",
                    "Widening of the superior mediastinum.",
                    "The mediastinal contour is widened.",
                ],
            )
    elif obs == LO:
        sev = _sev(f, "opacity")
        if unc:
            text = _pick(rng, [f"Possible subtle opacity {loc}.", f"Questionable opacity {loc}."])
        elif bilateral:
            text = _pick(
                rng, ["Patchy bibasilar opacities.", "Bilateral basilar airspace opacities."]
            )
        elif impression:
            text = f"{_cap(locadj)} opacity."
        else:
            text = _pick(
                rng,
                [
                    f"Patchy opacity {loc}.",
                    f"There is a {sev} opacity {loc}.",
                    f"{_cap(locadj)} airspace opacity.",
                    f"Hazy opacification {loc}.",
                    f"Patchy airspace disease {loc}.",
                ],
            )
    elif obs == LL:
        noun = "mass" if f.size_cm >= 3 else "nodule"
        size = f"{f.size_cm:.1f} cm"
        if unc:
            text = _pick(
                rng,
                [
                    f"Possible {size} nodule {loc}.",
                    f"Questionable nodule {loc}.",
                    f"Cannot exclude a small nodule {loc}.",
                ],
            )
        elif impression:
            text = f"{size} {locadj} {noun}."
        else:
            text = _pick(
                rng,
                [
                    f"{size} {noun} {loc}.",
                    f"There is a {size} {noun} {loc}.",
                    f"A rounded {size} {noun} is seen {loc}.",
                    f"{_cap(locadj)} pulmonary {noun} measuring {size}.",
                ],
            )
    elif obs == ED:
        sev = _sev(f, "grade")
        if unc:
            text = _pick(
                rng,
                [
                    "Possible mild pulmonary edema.",
                    "Questionable mild interstitial edema.",
                    "Cannot exclude mild pulmonary edema.",
                ],
            )
        elif impression:
            text = f"{_cap(sev)} pulmonary edema."
        else:
            text = _pick(
                rng,
                [
                    f"{_cap(sev)} pulmonary edema.",
                    f"There is {sev} interstitial pulmonary edema.",
                    f"{_cap(sev)} perihilar edema is present.",
                    f"Findings are consistent with {sev} pulmonary edema.",
                ],
            )
    elif obs == CO:
        if unc:
            text = _pick(
                rng,
                [
                    f"Possible consolidation {loc}.",
                    f"Cannot exclude consolidation {loc}.",
                    f"Questionable consolidation {loc}.",
                ],
            )
        elif bilateral:
            text = _pick(rng, ["Bibasilar consolidation.", "Bilateral lower lobe consolidation."])
        elif impression:
            text = f"{_cap(locadj)} consolidation."
        else:
            text = _pick(
                rng,
                [
                    f"Focal consolidation {loc}.",
                    f"There is consolidation {loc}.",
                    f"{_cap(locadj)} consolidation.",
                    f"Dense consolidation {loc}.",
                ],
            )
    elif obs == PN:
        if unc:
            text = _pick(
                rng,
                [
                    f"Cannot exclude early pneumonia {loc}.",
                    f"Possible early {locadj} pneumonia.",
                    f"Questionable pneumonia {loc}.",
                ],
            )
        elif bilateral:
            text = _pick(rng, ["Bibasilar pneumonia.", "Multifocal pneumonia at both lung bases."])
        elif impression:
            text = f"{_cap(locadj)} pneumonia."
        else:
            choice = int(rng.integers(4))
            if (choice == 2 and CO in others) or (choice == 3 and LO in others):
                choice = 0
            if choice == 0:
                text = f"{_cap(locadj)} pneumonia."
            elif choice == 1:
                text = f"Findings are consistent with pneumonia {loc}."
            elif choice == 2:
                text = f"Consolidation {loc} consistent with pneumonia."
                extra = ((CO, POSITIVE),)
            else:
                text = f"Airspace opacity {loc} consistent with pneumonia."
                extra = ((LO, POSITIVE),)
    elif obs == AT:
        sev = _sev(f, "atel")
        if unc:
            text = (
                "Possible minimal bibasilar atelectasis."
                if bilateral
                else _pick(
                    rng,
                    [
                        f"Possible minimal atelectasis at the {side} base.",
                        f"Questionable subsegmental atelectasis in the {side} lower lobe.",
                    ],
                )
            )
        elif bilateral:
            text = _pick(
                rng, [f"{_cap(sev)} bibasilar atelectasis.", "Bibasilar linear atelectasis."]
            )
        elif impression:
            text = f"{_cap(sev)} {side} basilar atelectasis."
        else:
            text = _pick(
                rng,
                [
                    f"{_cap(sev)} {side} basilar atelectasis.",
                    f"Linear atelectasis at the {side} lung base.",
                    f"Subsegmental atelectasis in the {side} lower lobe.",
                    f"There is {sev} atelectasis at the {side} base.",
                ],
            )
    elif obs == PO:
        sev = _sev(f, "grade")
        if unc:
            text = (
                "Possible bilateral pleural thickening."
                if bilateral
                else _pick(
                    rng,
                    [
                        f"Possible {side} pleural thickening.",
                        f"Questionable {side} lateral pleural thickening.",
                    ],
                )
            )
        elif bilateral:
            text = "Bilateral pleural thickening."
        elif impression:
            text = f"{_cap(side)} pleural thickening."
        else:
            text = _pick(
                rng,
                [
                    f"{_cap(sev)} {side} pleural thickening.",
                    f"There is {side} lateral pleural thickening.",
                    f"{_cap(side)} pleural thickening along the lateral chest wall.",
                ],
            )
    elif obs == FX:
        rib = _ORDINALS.get(f.rib, "6th")
        if unc:
            text = _pick(
                rng,
                [
                    f"Possible nondisplaced fracture of the {side} {rib} rib.",
                    f"Questionable fracture of the {side} {rib} rib.",
                ],
            )
        elif impression:
            text = f"{_cap(side)} {rib} rib fracture."
        else:
            text = _pick(
                rng,
                [
                    f"Acute fracture of the {side} {rib} rib.",
                    f"There is a minimally displaced fracture of the {side} {rib} rib.",
                    f"{_cap(side)} {rib} rib fracture.",
                    f"Nondisplaced fracture of the {side} {rib} lateral rib.",
                ],
            )
    elif obs == SD:
        text = _device_sentence(f, rng, impression)
    else:
        raise ValueError(f"unknown observation {obs!r}; expected one of {OBSERVATIONS[1:]}")
    return Sentence(text, ((obs, label), *extra))


def _device_sentence(f: Finding, rng: np.random.Generator, impression: bool) -> str:
    """Position statement for a support device (always asserted)."""
    side = "left" if f.side == "left" else "right"
    cm = int(rng.integers(3, 7))
    if f.device == "ett":
        options = (
            ["Endotracheal tube in standard position."]
            if impression
            else [
                f"Endotracheal tube terminates {cm} cm above the carina.",
                f"An endotracheal tube is in place with the tip {cm} cm above the carina.",
            ]
        )
    elif f.device == "ng":
        options = (
            ["Nasogastric tube in the stomach."]
            if impression
            else [
                "A nasogastric tube courses below the diaphragm with the tip in the stomach.",
                "Enteric tube tip is in the stomach.",
            ]
        )
    elif f.device == "picc":
        options = (
            [f"{_cap(side)} PICC line tip in the SVC."]
            if impression
            else [
                f"{_cap(side)}-sided PICC line terminates in the mid SVC.",
                f"A {side} PICC line has its tip in the lower SVC.",
            ]
        )
    elif f.device == "pacemaker":
        options = (
            ["Pacemaker in place."]
            if impression
            else [
                "Left chest wall pacemaker with leads in the right atrium and right ventricle.",
                "A dual-lead pacemaker is present.",
            ]
        )
    else:
        options = (
            [f"{_cap(side)} chest tube in place."]
            if impression
            else [f"A {side} chest tube is in place.", f"{_cap(side)}-sided chest tube is present."]
        )
    return _pick(rng, options)


# Negative statements: (text, observations negated). One observation per clause.
_NEGATIVES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("No pleural effusion.", (PE,)),
    ("There is no pleural effusion.", (PE,)),
    ("No pneumothorax.", (PTX,)),
    ("There is no pneumothorax.", (PTX,)),
    ("No pneumothorax is seen.", (PTX,)),
    ("No pleural effusion or pneumothorax.", (PE, PTX)),
    ("The heart size is normal.", (CM,)),
    ("Heart size is normal.", (CM,)),
    ("Normal heart size.", (CM,)),
    ("The heart is normal in size.", (CM,)),
    ("The cardiomediastinal silhouette is normal.", (EC,)),
    ("Normal cardiomediastinal silhouette.", (EC,)),
    ("The mediastinal and hilar contours are normal.", (EC,)),
    ("Mediastinal contours are within normal limits.", (EC,)),
    ("No focal consolidation.", (CO,)),
    ("There is no focal consolidation.", (CO,)),
    ("No pulmonary edema.", (ED,)),
    ("There is no pulmonary edema.", (ED,)),
    ("No evidence of pneumonia.", (PN,)),
    ("No pulmonary nodule is seen.", (LL,)),
    ("No displaced rib fracture.", (FX,)),
    ("No acute fracture.", (FX,)),
    ("No focal airspace opacity.", (LO,)),
)
_NEGATIVE_WEIGHT = {PE: 3.0, PTX: 3.0, CM: 3.0, EC: 2.0, CO: 2.0, ED: 1.5, PN: 0.6}
_SLOT = {SD: 0, LO: 1, LL: 1, ED: 1, CO: 1, PN: 1, AT: 1, PE: 2, PTX: 2, PO: 2, CM: 3, EC: 3, FX: 4}

_INDICATIONS = (
    "with cough and fever",
    "with shortness of breath",
    "with chest pain",
    "with hypoxia",
    "status post fall",
    "with dyspnea on exertion",
    "with fever and leukocytosis",
    "with tachycardia",
    "with productive cough",
    "with weakness and malaise",
    "with hemoptysis",
    "for preoperative evaluation",
)
_QUESTIONS = (
    "Evaluate for acute process.",
    "? acute cardiopulmonary process",
    "Assess for acute intrathoracic process.",
    "Interval change?",
    "Evaluate.",
)
_NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute intrathoracic process.",
    "Normal chest radiograph.",
)


def negative_sentences(excluded: set[str], rng: np.random.Generator, count: int) -> list[Sentence]:
    """Up to ``count`` negations of observations not in ``excluded``, each negated once."""
    pool = [(text, obs) for text, obs in _NEGATIVES if not set(obs) & excluded]
    chosen: list[Sentence] = []
    used: set[str] = set(excluded)
    order = rng.permutation(len(pool))
    weights = {i: max(_NEGATIVE_WEIGHT.get(pool[i][1][0], 0.5), 0.1) for i in order}
    ranked = sorted(order, key=lambda i: -weights[i] * rng.uniform(0.3, 1.0))
    for i in ranked:
        text, obs = pool[int(i)]
        if set(obs) & used:
            continue
        chosen.append(Sentence(text, tuple((o, NEGATIVE) for o in obs)))
        used.update(obs)
        if len(chosen) >= count:
            break
    return chosen


def aggregate_labels(sentences: Sequence[Sentence]) -> dict[str, float | None]:
    """CheXpert aggregation: positive > uncertain > negative per observation; No Finding rule."""
    values: dict[str, list[float]] = {}
    for sentence in sentences:
        for obs, value in sentence.mentions:
            values.setdefault(obs, []).append(value)
    labels: dict[str, float | None] = dict.fromkeys(OBSERVATIONS)
    for obs, seen in values.items():
        labels[obs] = POSITIVE if POSITIVE in seen else UNCERTAIN if UNCERTAIN in seen else NEGATIVE
    abnormal = any(labels[o] in (POSITIVE, UNCERTAIN) for o in PATHOLOGIES)
    labels["No Finding"] = None if abnormal else POSITIVE
    return labels


def _wrap(paragraph: str) -> str:
    """Wraps like MIMIC-CXR: lines of at most ~78 characters, each starting with a space."""
    lines = textwrap.wrap(paragraph, width=76, break_long_words=False, break_on_hyphens=False)
    return "\n".join(" " + line for line in lines)


@dataclass
class _Builder:
    """Accumulates report lines and the sentences that carry labels."""

    lines: list[str] = field(default_factory=list)
    sentences: list[Sentence] = field(default_factory=list)

    def section(self, title: str, inline: str | None = None) -> None:
        if inline is not None:
            self.lines.append(_wrap(f"{title}:  {inline}"))
        else:
            self.lines.append(f" {title}:")
        self.lines.append(" ")

    def paragraph(self, sentences: Sequence[Sentence], joiner: str) -> None:
        self.sentences.extend(sentences)
        self.lines.append(_wrap(joiner.join(s.text for s in sentences)))
        self.lines.append(" ")

    def numbered(self, sentences: Sequence[Sentence]) -> None:
        self.sentences.extend(sentences)
        for number, sentence in enumerate(sentences, start=1):
            self.lines.append(_wrap(f"{number}. {sentence.text}"))
        self.lines.append(" ")


def compose_report(
    findings: Sequence[Finding], rng: np.random.Generator, exam: ExamInfo
) -> StudyReport:
    """Writes the free-text report of a study whose true findings are ``findings``.

    Args:
        findings: What the study shows (positive or uncertain); empty for a normal study.
        rng: Source of all wording choices.
        exam: Views, patient sex and whether there is a prior (for the header sections).

    Returns:
        The report text with labels aggregated from the sentences actually written.
    """
    stated = {f.observation for f in findings}
    impression_only = rng.random() < 0.1
    wet_read = rng.random() < 0.1
    title_case = rng.random() < 0.15
    joiner = "  " if rng.random() < 0.5 else " "

    # FINDINGS body: stated findings, then negatives, then neutral sentences, in MIMIC order.
    body = [
        (_SLOT[f.observation], finding_sentence(f, rng, others=frozenset(stated))) for f in findings
    ]
    negatives = negative_sentences(stated, rng, int(rng.integers(2, 5)))
    body += [(_SLOT[s.mentions[0][0]], s) for s in negatives]
    if stated & _PARENCHYMAL:
        if rng.random() < 0.5 and ED not in stated:
            body.append((1.5, Sentence("The lungs are otherwise clear.")))
    else:
        lungs_clear = [
            "The lungs are clear.",
            "Lungs are clear.",
            "The lungs are well expanded and clear.",
        ]
        body.append((0.5, Sentence(_pick(rng, lungs_clear))))
    if FX not in stated and rng.random() < 0.5:
        bones = [
            "No acute osseous abnormality.",
            "The visualized osseous structures are unremarkable.",
        ]
        body.append((5, Sentence(_pick(rng, bones))))
    order = [0, 1, 2, 3, 4, 5] if rng.random() < 0.6 else [0, 3, 1, 2, 4, 5]
    body.sort(key=lambda item: (order.index(int(item[0])) if int(item[0]) in order else 9, item[0]))
    body_sentences = [s for _, s in body]

    # IMPRESSION: the stated findings (short forms), or a normal statement.
    if findings:
        ordered = sorted(findings, key=lambda f: (f.observation == SD, -f.label, f.observation))
        impression = [finding_sentence(f, rng, impression=True) for f in ordered]
        if rng.random() < 0.3 and negatives:
            impression.append(negatives[0])
    else:
        impression = [Sentence(_pick(rng, _NORMAL_IMPRESSIONS))]

    builder = _Builder()
    if wet_read:
        hour, minute = int(rng.integers(1, 13)), int(rng.integers(0, 60))
        noon = _pick(rng, ["AM", "PM"])
        builder.lines.append(f" WET READ: ___ ___ ___ {hour}:{minute:02d} {noon}")
        builder.sentences.extend(impression)
        wet_text = _wrap(" ".join(s.text for s in impression))
        builder.lines.append("\n".join(" " + line for line in wet_text.split("\n")))
        builder.lines.append(" " + "_" * 78)
        builder.lines.append(" ")
    builder.lines.append(" " * 33 + "FINAL REPORT")

    views = (
        f"{exam.frontal} AND LAT"
        if exam.lateral
        else ("PORTABLE AP" if exam.frontal == "AP" else "PA")
    )
    builder.lines.append(f" EXAMINATION:  CHEST ({views})")
    builder.lines.append(" ")
    person = "woman" if exam.sex == "F" else "man"
    indication = f"___ year old {person} {_pick(rng, _INDICATIONS)}."
    if rng.random() < 0.6:
        indication += f"  // {_pick(rng, _QUESTIONS)}"
    if any(f.device == "ett" for f in findings):
        indication = f"___ year old {person}, intubated.  // Evaluate for acute process."
    builder.section(_title("INDICATION", title_case), indication)
    if rng.random() < 0.5:
        technique = (
            f"Chest {exam.frontal} and lateral" if exam.lateral else f"Chest {exam.frontal} view"
        )
        builder.section(_title("TECHNIQUE", title_case), technique)
    comparison = (
        _pick(rng, ["___.", "Chest radiograph ___.", "Prior study from ___.", "___ and ___."])
        if exam.has_prior
        else _pick(rng, ["None.", "None available.", "___."])
    )
    builder.section(_title("COMPARISON", title_case), comparison)
    if not impression_only:
        builder.section(_title("FINDINGS", title_case))
        if rng.random() < 0.5:
            opener = (
                "PA and lateral views of the chest were obtained."
                if exam.lateral
                else "Single portable AP view of the chest."
                if exam.frontal == "AP"
                else "Single frontal view of the chest."
            )
            body_sentences.insert(0, Sentence(opener))
        builder.paragraph(body_sentences, joiner)
        builder.section(_title("IMPRESSION", title_case))
        if len(impression) > 1 and rng.random() < 0.7:
            builder.numbered(impression)
        else:
            builder.paragraph(impression, joiner)
    else:
        builder.section(_title("IMPRESSION", title_case))
        builder.paragraph(body_sentences + [s for s in impression if not s.mentions], joiner)
    text = "\n".join(builder.lines).rstrip() + "\n"
    labels = aggregate_labels(builder.sentences)
    for f in findings:
        if labels[f.observation] != f.label:
            raise AssertionError(f"report labels disagree with finding {f}")
    return StudyReport(
        text=text,
        labels=labels,
        findings=tuple(findings),
        has_findings_section=not impression_only,
        has_wet_read=wet_read,
    )


def _title(name: str, title_case: bool) -> str:
    """Section header, occasionally in title case as some sites write it."""
    return name.title() if title_case else name
