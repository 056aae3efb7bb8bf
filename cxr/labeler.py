"""Rule-based CheXpert-14 labeler: a surface-pattern port of the CheXpert labeler's logic.

The official labeler (stanfordmlgroup/chexpert-labeler) runs three stages per sentence:

1. **Extract**: find mention phrases of each observation (``phrases/mention/*.txt``), dropping
   matches that overlap an exclusion phrase (``phrases/unmention/*.txt`` plus positional
   phrases such as "in the heart" built from the Cardiomegaly / Enlarged Cardiomediastinum
   lists).
2. **Classify**: decide each mention's polarity with NegBio Semgrex patterns over a
   dependency parse, in the order pre-negation uncertainty -> negation -> post-negation
   uncertainty (``patterns/*.txt``).
3. **Aggregate**: per observation, positive beats uncertain beats negative; a positive or
   uncertain "chf" / "heart failure" adds an uncertain Cardiomegaly; No Finding is 1 unless
   some mention other than Support Devices (the 12 pathologies *and* the "other findings"
   list ``no_finding.txt``, e.g. emphysema, granuloma) is positive or uncertain, else blank.

The phrase lists are read at run time from the rules directory. We have no dependency parser
offline, so stage 2 is a surface approximation: trigger words and phrases taken from the
pattern files (``pattern_lemmas`` reads the lemmas they name; a test checks that each one is
either a trigger here or listed in ``PATTERN_CONTEXT_LEMMAS``). Each trigger has a direction
(a forward trigger governs mentions after it; a backward trigger governs mentions before it
that are separated only by copulas, adverbs and other mentions, as in "heart size is
normal") and a scope that ends at clause boundaries (". ", ";", "but", "however",
"although", "which", "except", "with", a comma that starts a new statement, ...).
Approximations, all deliberate:

- Mentions match at word starts, case-insensitively (the official labeler matches raw
  substrings), optionally after a combining form (cardio-, hydro-, broncho-, micro-,
  dextro-...) so that "cardiomediastinal silhouette", "hydropneumothorax",
  "bronchopneumonia" and "dextroscoliosis" still match as they do officially, while "oscar"
  or "outlines" do not. ``_`` in a phrase marks a word boundary and takes no combining form
  ("pneumomediastinum" is not "_mediastinum"); a space also matches a hyphen.
- A few extra exclusions fix substring accidents of the phrase lists: "plate-like
  atelectasis", "tuberculosis", "Kerley B lines", "septal lines" and "pleural line" are not
  Support Devices.
- "no change in X" / "no increase in X" do not negate X (pseudo-negations, as in NegEx).
- "X, Y or Z" lists: only the items adjacent to "or" / "versus" become uncertain.
- Subject lists share a backward trigger: "heart size, mediastinal contour, and pulmonary
  vascularity are within normal limits" negates both mentions.
- Semgrex rules with no surface equivalent are left out (e.g. "X is previously
  demonstrated" -> negative, "silhouette obscured" -> negative).
- "X is not seen / identified / enlarged" negate; "not well seen", "not visualized",
  "not evaluated" and "not appreciated" are uncertain, as the post-negation file says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr.observations import OBSERVATIONS

DEFAULT_RULES_DIR = Path(__file__).resolve().parent / "resources" / "chexpert_labeler_rules"
"""The CheXpert labeler's phrase and pattern files (MIT, stanfordmlgroup/chexpert-labeler at
44ddeb3), shipped verbatim with their LICENSE in ``cxr/resources``."""


NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
CARDIOMEGALY = "Cardiomegaly"
ENLARGED_CM = "Enlarged Cardiomediastinum"
EDEMA = "Edema"
PATHOLOGIES: tuple[str, ...] = OBSERVATIONS[1:-1]
"""The 12 observations that rule out No Finding when positive or uncertain."""

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
UNCERTAINTY_POLICIES: tuple[str, ...] = ("u_ones", "u_zeros", "ignore")

# Deliberate extra exclusions (see module docstring): observation -> phrases.
EXTRA_UNMENTIONS: dict[str, tuple[str, ...]] = {
    SUPPORT_DEVICES: (
        "plate-like",
        "platelike",
        "plate like",
        "tubercul",
        "kerley b line",
        "kerley line",
        "septal line",
        "pleural line",
    ),
}

# Edema mentions that are uncertain by themselves (post-negation file, last rules).
_ALWAYS_UNCERTAIN = {
    EDEMA: ("vascular congestion", "pulmonary congestion", "indistinctness", "vascular prominence")
}
# Head lemmas of the "stable/unchanged silhouette" rule (post-negation file, first rules).
_STABLE_HEADS = frozenset(
    {
        "cardiomediastinal",
        "pericardial",
        "mediastinal",
        "mediastinum",
        "cardiomediastinum",
        "contour",
        "contours",
        "configuration",
        "silhouette",
        "silhouettes",
        "size",
        "heart",
        "shadow",
    }
)

_TOKEN = re.compile(r"\d+(?:\.\d+)+|[a-z0-9]+(?:['\-][a-z0-9]+)*|_+|[^\sa-z0-9_]")

# Tokens that end every scope (clause boundaries).
_HARD_BREAKS = frozenset(
    {
        ";",
        ":",
        ".",
        "!",
        "but",
        "however",
        "although",
        "though",
        "whereas",
        "while",
        "which",
        "except",
        "apart",
        "aside",
        "besides",
        "nevertheless",
        "yet",
        "otherwise",
        "instead",
    }
)
# Tokens that end a forward scope (a new noun phrase attached by a preposition).
_SOFT_BREAKS = frozenset({"with", "given", "due", "after", "because"})
# A comma or "and" followed by one of these starts a new statement.
_STATEMENT_STARTS = frozenset(
    {"there", "the", "this", "these", "it", "a", "an", "which", "with"}
    | {"is", "are", "was", "were", "has", "have"}
)
# ... and one of these too, unless the list goes on to an "or" ("no A, large B, or C").
_FINDING_STARTS = frozenset(
    {"new", "small", "large", "moderate", "mild", "minimal", "trace", "tiny", "severe"}
    | {"marked", "stable", "unchanged", "persistent", "residual", "increased", "increasing"}
    | {"decreased", "decreasing", "improved", "improving", "worsened", "worsening"}
    | {"interval", "possible", "possibly", "probable", "likely", "may", "some", "patchy"}
    | {"left", "right", "bilateral"}
)
_COPULAS = frozenset(
    {"is", "are", "was", "were", "seen", "noted", "identified", "present", "demonstrated"}
)
# Words allowed between a mention and a backward trigger ("heart size is top normal").
_FILLER = frozenset(
    {
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "has",
        "have",
        "had",
        "appears",
        "appear",
        "appeared",
        "remains",
        "remain",
        "remained",
        "seems",
        "seem",
        "looks",
        "look",
        "now",
        "otherwise",
        "again",
        "still",
        "also",
        "overall",
        "grossly",
        "essentially",
        "generally",
        "largely",
        "currently",
        "radiographically",
        "both",
        "within",
        "at",
        "on",
        "of",
        "in",
        "the",
        "a",
        "and",
        "upper",
        "top",
        "high",
        "low",
        "limits",
        "limit",
        "size",
        "sizes",
        "contour",
        "contours",
        "silhouette",
        "configuration",
        "mediastinum",
        "mediastinal",
        "cardiomediastinal",
        "hilar",
        "hila",
        "hilum",
        "pulmonary",
        "vascularity",
        "vasculature",
        "cardiac",
        "heart",
        "lung",
        "lungs",
        "left",
        "right",
        "bilateral",
        "side",
        "base",
        "bases",
        "apex",
        "previously",
        "previous",
        "prior",
        "seen",
        "noted",
        "described",
        "visualized",
        "demonstrated",
        "identified",
        "this",
        "today",
        "study",
        "examination",
        "exam",
        "completely",
        "entirely",
        "fully",
        "since",
        "interval",
        "___",
        "near",
        "very",
        "vascular",
        "engorgement",
        "lesion",
        "lesions",
    }
)
_PLURAL_VERBS = frozenset({"are", "were", "appear", "remain", "seem", "look"})
_LIST_VERBS = frozenset(
    {"is", "are", "was", "were", "appear", "appears", "remain", "remains", "seem", "seems"}
)


@dataclass(frozen=True)
class _Trigger:
    """A surface trigger: a regex over space-joined tokens, its kind, direction and reach."""

    pattern: re.Pattern[str]
    kind: str  # "pre", "neg" or "post"
    direction: str  # "fwd", "bwd" or "both"
    reach: int  # max tokens between trigger and mention


def _trig(words: str, kind: str, direction: str, reach: int = 30) -> list[_Trigger]:
    """Compiles ``|``-separated alternatives into one token-aligned trigger regex.

    Longer alternatives come first, so "no longer" wins over "no" at the same position.
    """
    alternatives, depth, current = [], 0, ""
    for char in words:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "|" and depth == 0:
            alternatives.append(current)
            current = ""
        else:
            current += char
    alternatives.append(current)
    alternatives.sort(key=len, reverse=True)
    pattern = re.compile(rf"(?<!\S)(?:{'|'.join(alternatives)})(?!\S)")
    return [_Trigger(pattern, kind, direction, reach)]


# Stage 1 (pre_negation_uncertainty.txt): cannot exclude / rule out, not excluded, no new.
_PRE = [
    *_trig(
        r"cannot exclude|can not exclude|could not exclude|cannot rule out|can not rule out|"
        r"not rule out|difficult to exclude|no evidence to rule out|cannot be excluded for",
        "pre",
        "fwd",
    ),
    *_trig(
        r"(?:cannot|can not|could not|can't|may not|might not|is not|are not|not) "
        r"(?:be )?(?:entirely |completely |totally |definitely )?(?:excluded|ruled out)",
        "pre",
        "bwd",
        8,
    ),
    *_trig(r"no new|no new area of|no evidence of new", "pre", "fwd", 6),
]
# Stage 2 (negation.txt).
_NEG = [
    *_trig(
        r"no|without|negative for|free of|absence of|resolution of|clearing of|clear of|"
        r"removal of|disappearance of|drainage of|rather than|history of|rule out|ruled out|"
        r"rule-out|to exclude|exclude|excluded|never|none|nor|no longer|no evidence of|no sign of",
        "neg",
        "fwd",
    ),
    *_trig(r"not|absent|resolved|cleared|removed", "neg", "fwd", 3),
    *_trig(r"normal|unremarkable|within normal limits", "neg", "fwd", 5),
    *_trig(
        r"not(?! (?:well|clearly|entirely|completely|definitely|be|excluded|ruled|appreciated|"
        r"visualized|evaluated|assessed|(?:significantly )?change[sd]?)(?!\S))|no longer|normal|"
        r"unremarkable|resolved|removed|cleared|absent|negative",
        "neg",
        "bwd",
        14,
    ),
]
# Stage 3 (post_negation_uncertainty.txt).
_POST = [
    *_trig(
        r"possible|possibly|probable|probably|presumably|presumed|questionable|questionably|"
        r"question of|suspect|suspected|suspicious|suspicion|concern|concerning|worrisome|"
        r"may|might|could|would|likely|unlikely|less likely|suggest|suggests|suggested|"
        r"suggestive|suggesting|suggestion of|consider|considered|consideration|favor|"
        r"favored|favoring|favour|differential|versus|vs|borderline|equivocal|indeterminate|"
        r"uncertain|perhaps|maybe|correlate|correlation|not well|poorly|incompletely|"
        r"cannot|can not",
        "post",
        "fwd",
    ),
    *_trig(r"\?|secondary to|obscured|obscuring|obscures", "post", "fwd", 3),
    *_trig(
        r"possible|suspected|questioned|(?:un)?likely(?= [,.;:?]|$)|versus|vs|\?|"
        r"(?:may|might|could|can) (?:also |well |still )?be|"
        r"borderline|not (?:well |clearly )?(?:seen|visualized|evaluated|assessed|appreciated)|"
        r"poorly|incompletely|obscured|a consideration|a possibility|not clearly",
        "post",
        "bwd",
        8,
    ),
]
# Pseudo-negations: matched spans suppress negation triggers inside them (NegEx style).
_PSEUDO = re.compile(
    r"(?<!\S)(?:no|not|without)(?: significant| appreciable| substantial| definite| significantly"
    r"| interval| other| major)* (?:change|changes|changed|increase|decrease|increased|"
    r"decreased|improvement|worsening|progression|only)(?!\S)"
)
# Stable/unchanged rule for cardiac and mediastinal silhouettes (post-negation, first rules).
_STABLE_FWD = re.compile(
    r"(?<!\S)(?:stable|unchanged|no (?:significant |interval )*change in)(?!\S)"
)
_STABLE_BWD = re.compile(
    r"(?<!\S)(?:stable|unchanged|similar to (?:the )?(?:prior|previous)|"
    r"(?:not|no) (?:significantly )?change[ds]?)(?!\S)"
)
_OR = frozenset({"or", "versus", "vs"})

PATTERN_FILES = {
    "pre": "pre_negation_uncertainty.txt",
    "neg": "negation.txt",
    "post": "post_negation_uncertainty.txt",
}
"""Stage -> NegBio pattern file under ``<rules>/patterns``, in the order they are applied."""

# Lemmas of the pattern files that are not triggers of their own here: graph context of a
# trigger that the surface rules cover another way, e.g. "no NN to suggest X" and "no focus
# of X" are covered by the forward "no"; "X is not enlarged" by the backward "not";
# "may represent / reflect / indicate X" by "may"; "is not excluded" and "no new" by stage 1.
PATTERN_CONTEXT_LEMMAS: dict[str, frozenset[str]] = {
    "pre": frozenset(),
    "neg": frozenset(
        {"acute", "area", "associate.*", "demonstrate", "demonstrate.*", "developing"}
        | {"development", "diagnose", "display", "enlarge", "explain", "finding", "finding.*"}
        | {"focus", "moderate", "obscure", "obvious", "present", "previously", "remain", "see"}
        | {"show", "silhouette", "structure.*", "suggest"}
    ),
    "post": frozenset(
        {"and.or", "angle", "appear", "appearance", "blunt.*", "clinically", "compatible"}
        | {"consistent", "costophrenic", "diagnosis", "due", "evidence", "excluded", "have"}
        | {"include", "indicate", "left", "new", "nsubj", "presence", "present", "reflect"}
        | {"represent", "signs", "symptom", "symptoms"}
    ),
}


def pattern_lemmas(rules_dir: str | Path | None = None) -> dict[str, frozenset[str]]:
    """Lemmas named by each NegBio pattern file (``{lemma:/a|b/}``), read at run time.

    Args:
        rules_dir: CheXpert rules directory; default :data:`DEFAULT_RULES_DIR`.

    Returns:
        Stage ("pre", "neg", "post") -> lemma regexes as written (e.g. ``"limit.*"``).
    """
    root = Path(rules_dir) if rules_dir is not None else DEFAULT_RULES_DIR
    out = {}
    for stage, name in PATTERN_FILES.items():
        lemmas: set[str] = set()
        for line in (root / "patterns" / name).read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                for match in re.finditer(r"lemma:/([^/]*)/", line):
                    lemmas.update(match.group(1).split("|"))
        out[stage] = frozenset(lemmas)
    return out


def trigger_vocabulary() -> dict[str, str]:
    """Stage -> the text of every surface rule of that stage (for auditing coverage)."""
    neg = [t.pattern.pattern for t in _NEG] + [_PSEUDO.pattern, *_FILLER]
    post = [t.pattern.pattern for t in _POST] + [_STABLE_FWD.pattern, _STABLE_BWD.pattern]
    post += [*_STABLE_HEADS, *(p for ps in _ALWAYS_UNCERTAIN.values() for p in ps)]
    return {
        "pre": " ".join(t.pattern.pattern for t in _PRE),
        "neg": " ".join(neg),
        "post": " ".join(post),
    }


@dataclass(frozen=True)
class Mention:
    """One mention found in a report.

    Attributes:
        observation: Observation name (or "No Finding" for the other-findings list).
        text: The matched text.
        sentence: The (cleaned, lower-case) sentence it is in.
        start: Character offset in the sentence.
        end: End offset in the sentence.
        value: 1.0 positive, 0.0 negative, -1.0 uncertain.
        rule: Which stage decided: "positive", "pre", "neg", "post", "or", "stable" or
            "always_uncertain".
    """

    observation: str
    text: str
    sentence: str
    start: int
    end: int
    value: float
    rule: str


# Combining forms allowed before a mention ("hydropneumothorax", "bronchopneumonia",
# "micronodules", "dextroscoliosis", "cardiomediastinal silhouette"), which the official
# substring matching finds too. Phrases written with a leading "_" get none.
_PREFIX_LIST = ("cardio", "hydro", "hemo", "haemo", "pyo", "chylo", "broncho", "micro")
_PREFIX_LIST += ("dextro", "levo", "kypho")
_COMBINING_PREFIXES = f"(?:{'|'.join(_PREFIX_LIST)})?"
_WORD_START = re.compile(r"(?<![a-z0-9])[a-z0-9]")


def _phrase_regex(phrase: str) -> str:
    """Regex for a mention phrase: word start, ``_`` = word boundary, combining prefixes."""
    core = phrase.strip()
    end = r"(?![a-z0-9])" if core.endswith("_") else ""
    words = core.strip("_").replace("_", " ").lower().split()
    body = r"[\s\-]+".join(re.escape(w) for w in words)
    prefix = "" if core.startswith("_") else _COMBINING_PREFIXES
    return rf"(?<![a-z0-9]){prefix}{body}{end}"


def _read_phrases(directory: Path) -> dict[str, list[str]]:
    """Phrase lists by observation name (file stem ``lung_opacity`` -> ``Lung Opacity``)."""
    out: dict[str, list[str]] = {}
    if not directory.is_dir():
        return out
    for file in sorted(directory.glob("*.txt")):
        name = file.stem.replace("_", " ").title()
        lines = file.read_text(encoding="utf-8").splitlines()
        out[name] = [line.strip() for line in lines if line.strip()]
    return out


def clean_text(text: str) -> str:
    """The CheXpert loader's cleaning: lower case, "and/or" -> "or", "a/b" -> "a or b"."""
    out = text.lower()
    out = out.replace("and/or", "or")
    out = re.sub(r"(?<=[a-z])/(?=[a-z])", " or ", out)
    out = out.replace("..", ".")
    out = re.sub(r"([.,])(?=[a-z])", r"\1 ", out)
    return out


_NO_SPLIT_ABBREV = re.compile(r"(?:\b(?:vs|e\.g|i\.e|approx|dr|mr|mrs|ms|st|fig)\.)$")


def split_sentences(text: str) -> list[str]:
    """Splits cleaned report text into sentences (paragraphs, then ``. `` / ``! `` / ``? ``).

    A ``?`` only ends a sentence when followed by an upper-case letter in the original
    text ("? pneumonia" stays a question mark inside a sentence).
    """
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n|\n(?=\s*\d+[.)]\s)", text or ""):
        flat = " ".join(paragraph.split())
        if not flat:
            continue
        start = 0
        for match in re.finditer(r"(?<=[.!])\s+|(?<=\?)\s+(?=[A-Z])", flat):
            piece = flat[start : match.start()]
            if _NO_SPLIT_ABBREV.search(piece.lower()):
                continue
            if piece.strip():
                sentences.append(piece.strip())
            start = match.end()
        if flat[start:].strip():
            sentences.append(flat[start:].strip())
    return sentences


class CheXpertLabeler:
    """The CheXpert labeler's extract / classify / aggregate logic on surface patterns.

    Args:
        mention_phrases: Observation -> mention phrases (as in ``phrases/mention``).
        unmention_phrases: Observation -> exclusion phrases (as in ``phrases/unmention``).
        extra_unmentions: Add :data:`EXTRA_UNMENTIONS` (substring-accident fixes).
    """

    def __init__(
        self,
        mention_phrases: dict[str, Sequence[str]],
        unmention_phrases: dict[str, Sequence[str]] | None = None,
        extra_unmentions: bool = True,
    ) -> None:
        unknown = set(mention_phrases) - set(OBSERVATIONS)
        if unknown:
            raise ValueError(f"unknown observations in phrase lists: {sorted(unknown)}")
        self.mention_phrases = {k: list(v) for k, v in mention_phrases.items()}
        unmentions = {k: list(v) for k, v in (unmention_phrases or {}).items()}
        unmentions = self._add_positional_unmentions(unmentions)
        if extra_unmentions:
            for obs, phrases in EXTRA_UNMENTIONS.items():
                unmentions.setdefault(obs, []).extend(phrases)
        self.unmention_phrases = unmentions
        self._mentions = [
            (obs, phrase, re.compile(_phrase_regex(phrase)))
            for obs in OBSERVATIONS
            for phrase in self.mention_phrases.get(obs, [])
            if phrase.strip("_ ")
        ]
        self._mention_index: dict[str, list[tuple[str, str, re.Pattern[str]]]] = {}
        for obs, phrase, regex in self._mentions:
            key = phrase.strip("_ ").lower()[:3]
            self._mention_index.setdefault(key, []).append((obs, phrase, regex))
        self._unmentions = {
            obs: [re.compile(_phrase_regex(p)) for p in phrases if p.strip("_ ")]
            for obs, phrases in unmentions.items()
        }

    def _add_positional_unmentions(self, unmentions: dict[str, list[str]]) -> dict[str, list[str]]:
        """Official positional exclusions: "over the / in the (left|right|superior) heart"."""
        positions = [
            f"{a}{b}"
            for a in ("over the", "overly the", "in the")
            for b in ("", " superior", " left", " right")
        ]
        cardio = [
            p.replace("_", " ").strip().replace("the ", "")
            for p in self.mention_phrases.get(CARDIOMEGALY, [])
            if p.strip() not in ("cardiomegaly", "cardiac enlargement")
        ]
        mediastinal = [
            p.replace("_", " ").strip() for p in self.mention_phrases.get(ENLARGED_CM, [])
        ]
        unmentions[CARDIOMEGALY] = [f"{a} {m}" for a in positions for m in cardio]
        unmentions[ENLARGED_CM] = [f"{a} {m}" for a in positions for m in mediastinal]
        return unmentions

    @classmethod
    def from_rules_dir(cls, path: str | Path | None = None) -> CheXpertLabeler:
        """Loads the phrase lists from a CheXpert-labeler rules directory.

        Args:
            path: Directory with ``phrases/mention`` and ``phrases/unmention``; default
                :data:`DEFAULT_RULES_DIR`.

        Raises:
            FileNotFoundError: No mention phrase lists under ``path``.
        """
        root = Path(path) if path is not None else DEFAULT_RULES_DIR
        mentions = _read_phrases(root / "phrases" / "mention")
        if not mentions:
            raise FileNotFoundError(f"no CheXpert mention phrase lists under {root / 'phrases'}")
        return cls(mentions, _read_phrases(root / "phrases" / "unmention"))

    # ---------------------------------------------------------------- extraction
    def _extract(self, sentence: str) -> list[tuple[str, str, int, int]]:
        """(observation, phrase, start, end) for every mention in one cleaned sentence."""
        found = []
        excluded: dict[str, list[tuple[int, int]]] = {}
        for start in _WORD_START.finditer(sentence):
            pos = start.start()
            keys = {sentence[pos : pos + 3]}
            keys.update(
                sentence[pos + len(p) : pos + len(p) + 3]
                for p in _PREFIX_LIST
                if sentence.startswith(p, pos)
            )
            for key in keys:
                for obs, phrase, regex in self._mention_index.get(key, ()):
                    match = regex.match(sentence, pos)
                    if match is None:
                        continue
                    if obs not in excluded:
                        excluded[obs] = [
                            u.span()
                            for unmention in self._unmentions.get(obs, [])
                            for u in unmention.finditer(sentence)
                        ]
                    m_start, m_end = match.span()
                    if not any(a < m_end and b > m_start for a, b in excluded[obs]):
                        found.append((obs, phrase, m_start, m_end))
        return found

    # ---------------------------------------------------------------- classification
    @staticmethod
    def _tokens(sentence: str) -> list[tuple[str, int, int]]:
        return [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(sentence)]

    @staticmethod
    def _trigger_spans(joined: str, offsets: list[int], triggers: list[_Trigger]):
        """Token spans (start, end, trigger) of every trigger match in the joined tokens."""
        spans = []
        for trig in triggers:
            for match in trig.pattern.finditer(joined):
                first = _token_at(offsets, match.start())
                last = _token_at(offsets, match.end() - 1) + 1
                spans.append((first, last, trig))
        return spans

    @staticmethod
    def _forward_ok(words: list[str], t_end: int, m_start: int, reach: int) -> bool:
        """Whether a trigger ending at token ``t_end`` governs a mention at ``m_start``."""
        if t_end > m_start or m_start - t_end > reach:
            return False
        seen_copula = False
        for i in range(t_end, m_start):
            word = words[i]
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if word in _HARD_BREAKS or word in _SOFT_BREAKS:
                return False
            if word in _COPULAS:
                seen_copula = True
            if word in (",", "and") and (nxt in _STATEMENT_STARTS or seen_copula):
                return False
            if word in (",", "and") and nxt in _FINDING_STARTS:
                rest = words[i + 1 :]
                stop = next((j for j, w in enumerate(rest) if w in _HARD_BREAKS), len(rest))
                if not ({"or", "nor"} & set(rest[:stop])):
                    return False
            if word == "," and i + 1 == m_start and seen_copula:
                return False
        return True

    @staticmethod
    def _backward_ok(
        words: list[str], m_end: int, t_start: int, reach: int, mention_tokens: set[int]
    ) -> bool:
        """Whether a trigger starting at ``t_start`` governs a mention ending at ``m_end``."""
        if t_start < m_end or t_start - m_end > reach:
            return False
        between = range(m_end, t_start)
        if not all(words[i] in _FILLER or i in mention_tokens or words[i] == "," for i in between):
            return False
        # A comma is allowed in a list subject: "heart size, mediastinal contour, and
        # pulmonary vascularity are normal" (a verb must follow the last comma).
        commas = [i for i in between if words[i] == ","]
        return not commas or any(words[i] in _LIST_VERBS for i in range(commas[-1], t_start))

    @staticmethod
    def _list_subject_ok(words: list[str], m_end: int, t_start: int) -> bool:
        """Whether the mention heads a subject list whose plural verb takes the trigger.

        As in "the contours, lungs, pleura and upper abdomen are normal".
        """
        between = words[m_end:t_start]
        if not between or between[0] not in (",", "and") or len(between) > 16:
            return False
        if any(w in _HARD_BREAKS or w in _SOFT_BREAKS for w in between):
            return False
        verbs = [i for i, w in enumerate(between) if w in _PLURAL_VERBS]
        if not verbs or not all(w in _FILLER for w in between[verbs[-1] + 1 :]):
            return False
        ands = [i for i, w in enumerate(between[: verbs[-1]]) if w == "and"]
        return bool(ands) and between[ands[-1] + 1] not in ("the", "there", "a", "an")

    def _governs(
        self,
        words: list[str],
        span: tuple[int, int, _Trigger],
        mention: tuple[int, int],
        others: set[int],
    ) -> bool:
        """Whether a trigger span governs the mention at token span ``mention``."""
        t_start, t_end, trig = span
        m_start, m_end = mention
        if t_start < m_end and t_end > m_start:  # the trigger is part of the mention
            return False
        if trig.direction in ("fwd", "both") and self._forward_ok(
            words, t_end, m_start, trig.reach
        ):
            return True
        if trig.direction not in ("bwd", "both"):
            return False
        return self._backward_ok(words, m_end, t_start, trig.reach, others) or (
            trig.kind == "neg" and self._list_subject_ok(words, m_end, t_start)
        )

    def _classify_sentence(
        self, sentence: str, found: list[tuple[str, str, int, int]]
    ) -> list[Mention]:
        """Polarity of each mention found in one cleaned sentence."""
        tokens = self._tokens(sentence)
        words = [t[0] for t in tokens]
        joined = " ".join(words)
        offsets, pos = [], 0
        for word in words:
            offsets.append(pos)
            pos += len(word) + 1
        spans: dict[tuple[int, int], tuple[int, int]] = {}
        for _, _, start, end in found:
            first = next((i for i, t in enumerate(tokens) if t[2] > start), len(tokens))
            last = next((i for i, t in enumerate(tokens) if t[1] >= end), len(tokens))
            spans[(start, end)] = (first, max(last, first + 1))
        mention_tokens = {i for a, b in spans.values() for i in range(a, b)}
        pseudo = [
            (_token_at(offsets, m.start()), _token_at(offsets, m.end() - 1) + 1)
            for m in _PSEUDO.finditer(joined)
        ]
        triggers = {
            kind: [
                span
                for span in self._trigger_spans(joined, offsets, table)
                if kind != "neg" or not any(a <= span[0] < b for a, b in pseudo)
            ]
            for kind, table in (("pre", _PRE), ("neg", _NEG), ("post", _POST))
        }
        stable_fwd = self._trigger_spans(joined, offsets, [_Trigger(_STABLE_FWD, "", "", 0)])
        stable_bwd = self._trigger_spans(joined, offsets, [_Trigger(_STABLE_BWD, "", "", 0)])

        results = []
        for obs, phrase, start, end in found:
            m_start, m_end = spans[(start, end)]
            others = mention_tokens - set(range(m_start, m_end))

            def governed(kind: str, m_start: int = m_start, m_end: int = m_end) -> bool:
                return any(
                    self._governs(words, span, (m_start, m_end), others)  # noqa: B023
                    for span in triggers[kind]
                )

            stable = (
                obs in (CARDIOMEGALY, ENLARGED_CM)
                and words[m_end - 1] in _STABLE_HEADS
                and (
                    any(self._forward_ok(words, e, m_start, 4) for _, e, _ in stable_fwd)
                    or any(self._backward_ok(words, m_end, b, 8, others) for b, _, _ in stable_bwd)
                )
            )
            if governed("pre"):
                value, rule = UNCERTAIN, "pre"
            elif governed("neg"):
                value, rule = NEGATIVE, "neg"
            elif phrase in _ALWAYS_UNCERTAIN.get(obs, ()):
                value, rule = UNCERTAIN, "always_uncertain"
            elif stable:
                value, rule = UNCERTAIN, "stable"
            elif governed("post"):
                value, rule = UNCERTAIN, "post"
            elif self._adjacent_or(words, m_start, m_end):
                value, rule = UNCERTAIN, "or"
            else:
                value, rule = POSITIVE, "positive"
            results.append(Mention(obs, sentence[start:end], sentence, start, end, value, rule))
        return results

    @staticmethod
    def _adjacent_or(words: list[str], m_start: int, m_end: int) -> bool:
        """Whether the mention is a conjunct of "or" / "versus" ("X or Y", "X versus Y")."""
        if m_end < len(words) and words[m_end] in _OR:
            return True
        for i in range(m_start - 1, max(m_start - 5, -1), -1):
            if words[i] in _OR:
                return True
            if words[i] in _HARD_BREAKS or words[i] in _SOFT_BREAKS or words[i] == ",":
                return False
        return False

    # ---------------------------------------------------------------- public API
    def mentions(self, text: str) -> list[Mention]:
        """Every mention in ``text`` with its polarity."""
        out: list[Mention] = []
        for raw in split_sentences(text):
            sentence = " ".join(clean_text(raw).split())
            found = self._extract(sentence)
            if found:
                out.extend(self._classify_sentence(sentence, found))
        return out

    def label(self, text: str) -> dict[str, float | None]:
        """CheXpert labels of one report text.

        Returns:
            Observation -> 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or None (not
            mentioned), in :data:`OBSERVATIONS` order.
        """
        return aggregate(self.mentions(text))

    def label_many(self, texts: Iterable[str]) -> list[dict[str, float | None]]:
        """:meth:`label` for each text."""
        return [self.label(text) for text in texts]


def _token_at(offsets: list[int], char: int) -> int:
    """Index of the token containing character ``char`` of the space-joined string."""
    lo, hi = 0, len(offsets) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if offsets[mid] <= char:
            lo = mid
        else:
            hi = mid - 1
    return lo


def aggregate(mentions: Iterable[Mention]) -> dict[str, float | None]:
    """The CheXpert aggregation of classified mentions into 14 labels.

    Positive beats uncertain beats negative per observation; a positive or uncertain "chf" /
    "heart failure" also adds an uncertain Cardiomegaly; No Finding is 1.0 when no mention
    other than Support Devices (other-findings list included) is positive or uncertain,
    otherwise None.
    """
    values: dict[str, list[float]] = {}
    no_finding = True
    for mention in mentions:
        if mention.observation != SUPPORT_DEVICES and mention.value != NEGATIVE:
            no_finding = False
        if mention.observation == NO_FINDING:
            continue
        if mention.value != NEGATIVE and mention.text in ("chf", "heart failure"):
            values.setdefault(CARDIOMEGALY, []).append(UNCERTAIN)
        values.setdefault(mention.observation, []).append(mention.value)
    labels: dict[str, float | None] = dict.fromkeys(OBSERVATIONS)
    for obs, seen in values.items():
        labels[obs] = POSITIVE if POSITIVE in seen else UNCERTAIN if UNCERTAIN in seen else NEGATIVE
    labels[NO_FINDING] = POSITIVE if no_finding else None
    return labels


def apply_uncertainty_policy(
    labels: dict[str, float | None], policy: str = "u_ones"
) -> dict[str, float | None]:
    """Maps uncertain (-1) labels for training: U-Ones -> 1, U-Zeros -> 0, ignore -> None.

    Positive and negative labels are kept; not mentioned stays None.

    Raises:
        ValueError: Unknown policy.
    """
    if policy not in UNCERTAINTY_POLICIES:
        raise ValueError(f"unknown uncertainty policy {policy!r}; expected {UNCERTAINTY_POLICIES}")
    replacement = {"u_ones": POSITIVE, "u_zeros": NEGATIVE, "ignore": None}[policy]
    out: dict[str, float | None] = {}
    for obs, value in labels.items():
        out[obs] = replacement if value == UNCERTAIN else value
    return out
