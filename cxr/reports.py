"""Radiology report section parsing: MIMIC-CXR free text, Open-i XML and headerless notes.

``parse_report`` splits a free-text report into canonical sections (FINDINGS, IMPRESSION, ...)
and keeps unknown sections under their own upper-case title. Header recognition uses a small
built-in list of canonical titles and synonyms, plus the NegBio section-title list when it is
available (read at run time from ``titles_path``; nothing of it is copied here). Typos of the
core titles ("IMPRESSON:", "FINDNGS:") are mapped by fuzzy matching.

``training_text`` picks the text a model trains on (FINDINGS + IMPRESSION by default) and says
where it came from. ``parse_openi_xml`` reads one Open-i / IU X-ray ``<eCitation>`` file.
"""

from __future__ import annotations

import difflib
import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TITLES_PATH = (
    Path(__file__).resolve().parent / "resources" / "negbio" / "section_titles.txt"
)
"""NegBio's section-title list (US public domain, ncbi-nlp/NegBio at 073199e), shipped verbatim
in ``cxr/resources``; optional at run time."""

INDICATION = "INDICATION"
HISTORY = "HISTORY"
COMPARISON = "COMPARISON"
TECHNIQUE = "TECHNIQUE"
EXAMINATION = "EXAMINATION"
FINDINGS = "FINDINGS"
IMPRESSION = "IMPRESSION"
WET_READ = "WET_READ"
CANONICAL_SECTIONS: tuple[str, ...] = (
    INDICATION,
    HISTORY,
    COMPARISON,
    TECHNIQUE,
    EXAMINATION,
    FINDINGS,
    IMPRESSION,
    WET_READ,
)

# Built-in synonyms (upper case, single spaces, no colon) -> canonical section.
SECTION_SYNONYMS: dict[str, str] = {
    **dict.fromkeys(
        (
            "INDICATION",
            "INDICATIONS",
            "REASON FOR EXAM",
            "REASON FOR EXAMINATION",
            "REASON FOR THIS EXAMINATION",
            "REASON FOR THE EXAM",
            "REASON FOR STUDY",
            "CLINICAL INDICATION",
            "CLINIC INDICATION",
            "INDICATION FOR EXAM",
            "INDICATION FOR EXAMINATION",
        ),
        INDICATION,
    ),
    **dict.fromkeys(
        (
            "HISTORY",
            "CLINICAL HISTORY",
            "PATIENT HISTORY",
            "HISTORY OF PRESENT ILLNESS",
            "CLINICAL INFORMATION",
            "CLINICAL DATA",
            "CLINICAL DETAILS",
            "INTERVAL HISTORY",
            "ADDITIONAL CLINICAL HISTORY PROVIDED",
            "MEDICAL CONDITION",
            "UNDERLYING MEDICAL CONDITION",
        ),
        HISTORY,
    ),
    **dict.fromkeys(
        (
            "COMPARISON",
            "COMPARISONS",
            "COMPARISON EXAM",
            "COMPARISON EXAMS",
            "COMPARISON STUDY",
            "COMPARISON STUDIES",
            "COMPARISON FILM",
            "COMPARISON FILMS",
            "COMPARISON TO PRIOR STUDY",
            "REFERENCE EXAM",
            "REFERENCE EXAMINATION",
            "COMPARE",
        ),
        COMPARISON,
    ),
    **dict.fromkeys(("TECHNIQUE", "TECHNIQUES"), TECHNIQUE),
    **dict.fromkeys(
        ("EXAMINATION", "EXAM", "TYPE OF EXAMINATION", "TYPE OF EXAM", "EXAMINATION TYPE"),
        EXAMINATION,
    ),
    **dict.fromkeys(
        (
            "FINDINGS",
            "FINDING",
            "FINDINGS AND IMPRESSION",
            "FINDINGS AND IMPRESSIONS",
            "FINDINGS/IMPRESSION",
            "FINDINGS IMPRESSION",
        ),
        FINDINGS,
    ),
    **dict.fromkeys(
        ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "OPINION"), IMPRESSION
    ),
    **dict.fromkeys(("WET READ", "WET_READ"), WET_READ),
}

# Titles whose misspellings (per the NegBio list: "IMPRESSON", "FINDNGS", ...) are mapped.
_FUZZY_TARGETS = ("FINDINGS", "IMPRESSION", "INDICATION", "COMPARISON", "CONCLUSION", "HISTORY")
_BANNERS = frozenset({"FINAL REPORT", "PRELIMINARY REPORT", "FINAL ADDENDUM"})
_CORE_MIDLINE = (
    "FINDINGS AND IMPRESSION|FINDINGS|IMPRESSIONS?|CONCLUSIONS?|INDICATIONS?|CLINICAL HISTORY|"
    "HISTORY|COMPARISONS?|TECHNIQUE|EXAMINATION|REASON FOR EXAM(?:INATION)?|WET READ"
)
_MIDLINE_HEADER = re.compile(rf"(?:(?<=[.!?])[ \t]+|[ \t]{{2,}})(?=(?:{_CORE_MIDLINE})[ \t]*:)")
_HEADER_LINE = re.compile(r"^\s*(?P<title>[A-Za-z][A-Za-z /&()'\-]{0,62}?)\s*:(?P<rest>.*)$")
_RULE_LINE = re.compile(r"^\s*_{5,}\s*$")
_WET_READ_STAMP = re.compile(r"^(?:___\s*)+(?:\d{1,2}:\d{2}\s*(?:[AP]\.?M\.?)?)?\s*", re.I)


def _norm_title(title: str) -> str:
    """Upper-case title with single spaces and no trailing colon."""
    return " ".join(title.replace("_", " ").strip().rstrip(":").split()).upper()


@functools.lru_cache(maxsize=8)
def load_section_titles(path: str | Path | None = DEFAULT_TITLES_PATH) -> frozenset[str]:
    """Reads a NegBio-style title list (one ``TITLE:`` per line); empty when unavailable.

    Args:
        path: The list file; ``None`` or a missing file gives an empty set.

    Returns:
        Normalised titles (upper case, single spaces, no colon).
    """
    if path is None:
        return frozenset()
    file = Path(path)
    if not file.is_file():
        return frozenset()
    lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    return frozenset(t for t in (_norm_title(line) for line in lines) if t)


@functools.lru_cache(maxsize=4096)
def canonical_section(title: str) -> str:
    """Maps a header as written ("Clinical history", "IMPRESSON") to its section name.

    Known synonyms map to the canonical names; close misspellings of the core titles too;
    anything else is returned normalised (upper case, spaces -> single spaces).
    """
    norm = _norm_title(title)
    if norm in SECTION_SYNONYMS:
        return SECTION_SYNONYMS[norm]
    if norm.startswith("ADDENDUM ") and norm[9:] in SECTION_SYNONYMS:
        return SECTION_SYNONYMS[norm[9:]]
    compact = norm.replace(" ", "")
    if len(compact) >= 6 and compact.isalpha():
        for target in _FUZZY_TARGETS:
            if difflib.SequenceMatcher(None, compact, target).ratio() >= 0.85:
                return SECTION_SYNONYMS[target]
        if compact.startswith("FINDINGSAND") or compact.startswith("FINDINGAND"):
            return FINDINGS
    return norm


def normalize_text(text: str) -> str:
    """Collapses whitespace, unifies de-identification marks and strips report banners.

    MIMIC-CXR ``___``, Open-i ``XXXX`` and MIMIC-III ``[** ... **]`` marks all become ``___``;
    underscore rule lines and the ``FINAL REPORT`` banner are removed.
    """
    if not text:
        return ""
    lines = []
    for line in text.splitlines():
        if _RULE_LINE.match(line) or _norm_title(line) in _BANNERS:
            continue
        lines.append(line)
    out = "\n".join(lines)
    out = re.sub(r"\[\*\*.*?\*\*\]", "___", out)
    out = re.sub(r"(?<![A-Za-z])X{2,}(?![A-Za-z])", "___", out)
    out = re.sub(r"_{2,}", "___", out)
    out = re.sub(r"^\s*(?:FINAL|PRELIMINARY) REPORT\s+", "", out)
    return " ".join(out.split())


@dataclass(frozen=True)
class ParsedReport:
    """A report split into sections.

    Attributes:
        sections: Canonical (or normalised unknown) section name -> normalised text. A
            section that occurs twice is concatenated.
        order: Section names in the order they first appear (what was found).
        preamble: Normalised text before the first header (the whole text when there is no
            header at all, e.g. clinical notes).
        titles: Section name -> the header as first written in the report.
    """

    sections: dict[str, str] = field(default_factory=dict)
    order: tuple[str, ...] = ()
    preamble: str = ""
    titles: dict[str, str] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        """Text of a section (canonical or unknown name, any case), or ``default``."""
        return self.sections.get(canonical_section(name), default)

    def has(self, name: str) -> bool:
        """Whether the section was found and is non-empty."""
        return bool(self.get(name))

    @property
    def findings(self) -> str:
        """FINDINGS text ('' when absent)."""
        return self.sections.get(FINDINGS, "")

    @property
    def impression(self) -> str:
        """IMPRESSION text ('' when absent)."""
        return self.sections.get(IMPRESSION, "")

    @property
    def has_headers(self) -> bool:
        """False for headerless notes (everything in the preamble)."""
        return bool(self.order)

    def training_text(self, mode: str = "findings_impression") -> tuple[str, str]:
        """Shortcut for :func:`training_text`."""
        return training_text(self, mode)


TRAINING_TEXT_MODES: tuple[str, ...] = ("findings_impression", "impression", "findings", "full")


def training_text(parsed: ParsedReport, mode: str = "findings_impression") -> tuple[str, str]:
    """The report text to train or label on, and where it came from.

    Args:
        parsed: A parsed report.
        mode: ``"findings_impression"`` (FINDINGS + " " + IMPRESSION; either alone when the
            other is missing), ``"impression"``, ``"findings"`` or ``"full"`` (preamble and
            every section in report order).

    Returns:
        ``(text, source)``; source is ``"findings+impression"``, ``"findings"``,
        ``"impression"``, ``"full"`` or ``"no_usable_text"`` (text is then ``""``).

    Raises:
        ValueError: Unknown mode.
    """
    if mode not in TRAINING_TEXT_MODES:
        raise ValueError(f"unknown training text mode {mode!r}; expected {TRAINING_TEXT_MODES}")
    findings, impression = parsed.findings, parsed.impression
    if mode == "findings_impression":
        if findings and impression:
            return f"{findings} {impression}", "findings+impression"
        if impression:
            return impression, "impression"
        if findings:
            return findings, "findings"
    elif mode == "impression" and impression:
        return impression, "impression"
    elif mode == "findings" and findings:
        return findings, "findings"
    elif mode == "full":
        parts = [parsed.preamble, *(parsed.sections[name] for name in parsed.order)]
        text = " ".join(p for p in parts if p)
        if text:
            return text, "full"
    return "", "no_usable_text"


def _header(line: str, known: frozenset[str]) -> tuple[str, str, str] | None:
    """(section name, title as written, rest of line) when ``line`` starts with a header."""
    stripped = line.strip()
    if not stripped:
        return None
    match = _HEADER_LINE.match(line)
    if match:
        title = match.group("title").strip()
        norm = _norm_title(title)
        name = canonical_section(title)
        letters = re.sub(r"[^A-Za-z]", "", title)
        core = norm in SECTION_SYNONYMS or name in CANONICAL_SECTIONS
        cased = letters.isupper() or title.istitle()
        shouted = letters.isupper() and len(letters) >= 4 and len(norm.split()) <= 8
        if core or (cased and norm in known) or shouted:
            return name, title, match.group("rest")
        return None
    # A core title alone on its line, without a colon ("IMPRESSION", "Findings").
    if (stripped.isupper() or stripped.istitle()) and _norm_title(stripped) in SECTION_SYNONYMS:
        return SECTION_SYNONYMS[_norm_title(stripped)], stripped, ""
    return None


def parse_report(text: str, titles_path: str | Path | None = DEFAULT_TITLES_PATH) -> ParsedReport:
    """Splits a free-text report into sections.

    Headers are recognised at line starts in any case (``IMPRESSION:``, ``Impression:``)
    with the content on the same or following lines; the core upper-case titles are also
    recognised mid-line after a sentence end (``... clear. IMPRESSION: ...``). Upper-case
    titles that are not known are kept under their own normalised name. ``FINAL REPORT``
    banners and underscore rules end the current section and are dropped; a ``WET READ``
    block keeps its text without the leading de-identified name/time stamp.

    Args:
        text: The report.
        titles_path: NegBio title list for extra header recognition; ``None`` or a missing
            file means the built-in list only.

    Returns:
        The parsed report; a text without any header is all preamble.
    """
    known = load_section_titles(titles_path)
    chunks: list[tuple[str | None, str | None, list[str]]] = [(None, None, [])]
    for raw_line in (text or "").splitlines():
        for line in _MIDLINE_HEADER.sub("\n", raw_line).split("\n"):
            if _RULE_LINE.match(line) or _norm_title(line) in _BANNERS:
                chunks.append((None, None, []))
                continue
            header = _header(line, known)
            if header is None:
                chunks[-1][2].append(line)
            else:
                name, title, rest = header
                chunks.append((name, title, [rest]))
    preamble_parts: list[str] = []
    sections: dict[str, str] = {}
    titles: dict[str, str] = {}
    order: list[str] = []
    for name, title, lines in chunks:
        body = normalize_text("\n".join(lines))
        if name is None:
            if body:
                preamble_parts.append(body)
            continue
        if name == WET_READ:
            body = _WET_READ_STAMP.sub("", body)
        if name not in sections:
            order.append(name)
            titles[name] = title or name
            sections[name] = body
        elif body:
            sections[name] = f"{sections[name]} {body}".strip()
    return ParsedReport(
        sections=sections,
        order=tuple(order),
        preamble=" ".join(preamble_parts),
        titles=titles,
    )


@dataclass(frozen=True)
class OpenIReport:
    """One Open-i / IU X-ray report.

    Attributes:
        report_id: The report number (``<IUXRId>``, else ``<pmcId>``, else ``<uId>``).
        sections: Canonical section name -> normalised text (``XXXX`` -> ``___``), from
            ``<AbstractText Label=...>``; empty sections are left out.
        image_ids: ``<parentImage id=...>`` values (Open-i PNG stems).
        mesh_major: Curator MeSH codes (``<MeSH><major>``), e.g. ``Opacity/lung/base/left``.
        mesh_automatic: Automatically extracted codes (``<MeSH><automatic>``).
    """

    report_id: str
    sections: dict[str, str]
    image_ids: list[str]
    mesh_major: list[str]
    mesh_automatic: list[str]

    @property
    def parsed(self) -> ParsedReport:
        """The sections as a :class:`ParsedReport` (for :func:`training_text`)."""
        order = tuple(self.sections)
        return ParsedReport(sections=dict(self.sections), order=order, titles={})

    @property
    def findings(self) -> str:
        """FINDINGS text ('' when absent)."""
        return self.sections.get(FINDINGS, "")

    @property
    def impression(self) -> str:
        """IMPRESSION text ('' when absent)."""
        return self.sections.get(IMPRESSION, "")

    def training_text(self, mode: str = "findings_impression") -> tuple[str, str]:
        """Shortcut for :func:`training_text` on this report."""
        return training_text(self.parsed, mode)


def _id_attr(root: ET.Element, tag: str) -> str:
    node = root.find(tag)
    return (node.get("id") or "").strip() if node is not None else ""


def parse_openi_xml(source: str | Path | bytes) -> OpenIReport:
    """Reads one Open-i ``<eCitation>`` XML report.

    Args:
        source: A file path or the XML bytes.

    Returns:
        The report with normalised sections, image ids and MeSH codes.
    """
    root = ET.fromstring(source) if isinstance(source, bytes) else ET.parse(Path(source)).getroot()
    report_id = _id_attr(root, "IUXRId") or _id_attr(root, "pmcId") or _id_attr(root, "uId")
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = node.get("Label") or ""
        body = normalize_text("".join(node.itertext()))
        if not label or not body:
            continue
        name = canonical_section(label)
        sections[name] = f"{sections[name]} {body}" if name in sections else body
    image_ids = [n.get("id", "") for n in root.iter("parentImage") if n.get("id")]

    def _codes(tag: str) -> list[str]:
        return [t for t in ((n.text or "").strip() for n in root.iter(tag)) if t]

    return OpenIReport(
        report_id=report_id,
        sections=sections,
        image_ids=image_ids,
        mesh_major=_codes("major"),
        mesh_automatic=_codes("automatic"),
    )


def iter_openi_dir(directory: str | Path) -> Iterable[OpenIReport]:
    """Parses every ``*.xml`` in a directory, in numeric file-name order."""
    files = sorted(
        Path(directory).glob("*.xml"),
        key=lambda p: (int(p.stem) if p.stem.isdigit() else 1 << 62, p.name),
    )
    for file in files:
        yield parse_openi_xml(file)
