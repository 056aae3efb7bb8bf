"""Privacy audit: search every output of a deployment for identifiers read back from the SOURCE.

The needles are not a list of what we think could leak: they are re-read from a sample of the
raw files themselves (their DICOM headers and their paths under the layout), so the audit tests
the actual contract "no name, birth date, raw patient id or DICOM UID reaches an output".

Where it looks (everything a run writes, except ``<storage>/private/``, which by design holds
the raw locations and the salt):

* Parquet files, decoded: every cell (strings, ids in integer columns, dates), the file's
  key-value metadata and field metadata. Pixel columns are not text and are skipped.
* JSON / text / markdown / CSV / any file without NUL bytes, as text.
* PNG files: their ``tEXt`` / ``zTXt`` / ``iTXt`` chunks.
* SQLite files (the MLflow store): every column of every table, plus the raw bytes.
* The DuckDB catalog: every column of every base table, the SQL of every view.
* Any other file: the printable-ASCII runs of its bytes (what ``strings`` shows).
* Event-log texts handed in by the caller (the Dagster side lives in ``assets/checks.py``).

A hit names the place (file, column / chunk / table, or event) and the needle's KIND with a
masked form of the value; the value itself is never part of ``str()``, ``repr()`` or
``as_dict()`` of a hit or a report, so reports can go to logs and the Dagster UI.

Matching is exact substring search (Aho-Corasick, through polars), case-insensitive for whole
values; short alphanumeric needles (name parts, bare numbers, dates) must stand as whole words,
so that a patient number does not "match" inside a hex digest.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HEADER_KEYWORDS = (
    "PatientName",
    "PatientBirthDate",
    "PatientID",
    "OtherPatientIDs",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
)
"""DICOM header fields whose values must never reach an output in clear."""
PERSON_NAME_KEYWORDS = ("PatientName", "ReferringPhysicianName")
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
PATH_PATIENT, PATH_STUDY, PATH_IMAGE = "path patient id", "path study id", "path image id"
PLACEHOLDERS = frozenset(
    {"ANONYMOUS", "ANONYMIZED", "ANONYMISED", "UNKNOWN", "REMOVED", "NONE", "NULL", "N/A"}
)
"""De-identification placeholders: present in headers, but not identifying."""
MIN_NEEDLE_LENGTH = 4
MIN_NUMERIC_DIGITS = 6
"""Integer cells are compared with numeric needles of at least this many digits only."""
TEXT_SUFFIXES = frozenset(
    {".json", ".txt", ".md", ".csv", ".tsv", ".yaml", ".yml", ".log", ".html", ".xml", ".py"}
)
PIXEL_COLUMNS = frozenset({"pixels"})
PRIVATE_DIR = "private"
DEFAULT_BINARY_LIMIT = 256 << 20
_BATCH_CHARS = 8 << 20
_CHUNK_BYTES = 8 << 20
_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{%d,}" % MIN_NEEDLE_LENGTH)
_MIMIC_PATIENT = re.compile(r"^p(\d{6,})$")
_MIMIC_STUDY = re.compile(r"^s(\d{6,})$")
_WORD = "0-9A-Za-z"


# ----------------------------------------------------------------------------------------------
# Needles


@dataclass(frozen=True)
class Needle:
    """One identifier value to search for.

    Attributes:
        kind: What it is (a DICOM keyword such as ``PatientID``, ``PatientName part``, or one of
            the path kinds).
        value: The identifier in clear. Never printed: see ``masked``.
        whole_word: Only count it where it is not part of a longer alphanumeric run.
        case_sensitive: Match exactly as written (name parts); else ASCII case-insensitive.
    """

    kind: str
    value: str = field(repr=False)
    whole_word: bool = False
    case_sensitive: bool = False

    @property
    def masked(self) -> str:
        """First character, then one ``*`` per further character: shows length, not content."""
        return self.value[:1] + "*" * (len(self.value) - 1)

    def __str__(self) -> str:
        return f"{self.kind} {self.masked}"


def _usable(value: str, min_length: int) -> bool:
    text = value.strip()
    return len(text) >= min_length and text.upper() not in PLACEHOLDERS and len(set(text)) > 1


def _alnum(value: str) -> bool:
    return value.isalnum()


def header_needles(dataset: Any, min_length: int = MIN_NEEDLE_LENGTH) -> list[Needle]:
    """Needles from one DICOM header (a ``pydicom.Dataset``): the ``HEADER_KEYWORDS`` present.

    Person names give the whole PN (``LAST^FIRST^MIDDLE``) and each part of at least
    ``min_length`` letters (whole word, case-sensitive); birth dates also give ``YYYY-MM-DD``.
    """
    from pydicom.multival import MultiValue

    needles: list[Needle] = []
    for keyword in HEADER_KEYWORDS:
        element = dataset.get(keyword)
        if element is None:
            continue
        values = list(element) if isinstance(element, MultiValue | list | tuple) else [element]
        for raw in values:
            text = str(raw).strip()
            if not _usable(text, min_length):
                continue
            if keyword in UID_KEYWORDS:
                needles.append(Needle(keyword, text, whole_word=True))
            else:
                needles.append(Needle(keyword, text, whole_word=_alnum(text)))
            if keyword in PERSON_NAME_KEYWORDS:
                for part in re.split(r"[\^=\s,]+", text):
                    if part.isalpha() and _usable(part, min_length) and part != text:
                        needles.append(
                            Needle(f"{keyword} part", part, whole_word=True, case_sensitive=True)
                        )
            if keyword == "PatientBirthDate" and re.fullmatch(r"\d{8}", text):
                iso = f"{text[:4]}-{text[4:6]}-{text[6:]}"
                needles.append(Needle(keyword, iso, whole_word=True))
    return needles


def path_needles(rel_path: str, min_length: int = MIN_NEEDLE_LENGTH) -> list[Needle]:
    """Needles from a source file's path relative to the archive root.

    MIMIC-CXR folders ``pNNNNNNNN`` / ``sNNNNNNNN`` give the patient / study id (with and
    without the letter); a file inside a study folder gives its image id (the file stem).
    Any other path component of 8+ characters with 4+ digits (a UID-named PACS folder, say)
    counts as a path id too.
    """
    needles: list[Needle] = []
    parts = Path(rel_path).parts
    for index, part in enumerate(parts):
        stem = Path(part).stem if index == len(parts) - 1 else part
        if match := _MIMIC_PATIENT.match(stem):
            needles += [Needle(PATH_PATIENT, stem), Needle(PATH_PATIENT, match[1], True)]
        elif match := _MIMIC_STUDY.match(stem):
            needles += [Needle(PATH_STUDY, stem), Needle(PATH_STUDY, match[1], True)]
        elif index == len(parts) - 1 and index > 0 and _MIMIC_STUDY.match(parts[index - 1]):
            if _usable(stem, min_length):
                needles.append(Needle(PATH_IMAGE, stem, whole_word=_alnum(stem)))
        elif len(stem) >= 8 and sum(c.isdigit() for c in stem) >= 4:
            needles.append(Needle(PATH_IMAGE, stem, whole_word=True))
    return needles


def sample_locations(locations_path: Path, sample_size: int) -> list[str]:
    """A deterministic spread of ``sample_size`` relative paths from ``locations.parquet``.

    Rows are ordered by ``file_id`` (a keyed hash, so the order is unrelated to the layout) and
    taken at even steps.
    """
    table = pq.read_table(locations_path, columns=["file_id", "rel_path"]).sort_by("file_id")
    paths = table.column("rel_path").to_pylist()
    if sample_size <= 0 or sample_size >= len(paths):
        return paths
    step = len(paths) / sample_size
    return [paths[int(i * step)] for i in range(sample_size)]


def needles_from_source(
    storage_root: Path,
    source_root: Path,
    sample_size: int = 256,
    min_length: int = MIN_NEEDLE_LENGTH,
) -> tuple[list[Needle], int]:
    """Needles re-read from a sample of the source files named in ``private/locations.parquet``.

    Args:
        storage_root: The storage root (its ``private/locations.parquet`` lists the files).
        source_root: The archive root the relative paths start from.
        sample_size: Files to sample (0 = all).
        min_length: Shorter values are ignored (too unspecific to search for).

    Returns:
        The needles (deduplicated) and the number of headers actually read.
    """
    import pydicom

    rel_paths = sample_locations(
        Path(storage_root) / PRIVATE_DIR / "locations.parquet", sample_size
    )
    needles: list[Needle] = []
    headers_read = 0
    for rel_path in rel_paths:
        needles += path_needles(rel_path, min_length)
        path = Path(source_root) / rel_path
        if path.suffix.lower() in TEXT_SUFFIXES | {".png", ".jpg", ".jpeg"}:
            continue
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            found = header_needles(dataset, min_length)
        except Exception:  # a broken file still gives whatever its path says
            continue
        headers_read += 1 if found else 0
        needles += found
    return sorted(set(needles), key=lambda n: (n.kind, n.value)), headers_read


# ----------------------------------------------------------------------------------------------
# Matching


class NeedleMatcher:
    """Finds needles in batches of texts (Aho-Corasick through polars' ``extract_many``)."""

    def __init__(self, needles: Iterable[Needle]) -> None:
        self.needles = sorted(set(needles), key=lambda n: (n.kind, n.value))
        self._by_value: dict[tuple[bool, str], list[Needle]] = {}
        for needle in self.needles:
            key = needle.value if needle.case_sensitive else needle.value.lower()
            self._by_value.setdefault((needle.case_sensitive, key), []).append(needle)
        self._sensitive = sorted({n.value for n in self.needles if n.case_sensitive})
        self._insensitive = sorted({n.value for n in self.needles if not n.case_sensitive})
        self.numeric = {
            int(n.value): n
            for n in self.needles
            if n.value.isdigit() and len(n.value) >= MIN_NUMERIC_DIGITS
        }
        self._boundaries: dict[str, re.Pattern[str]] = {}

    def by_kind(self) -> dict[str, int]:
        """Number of distinct needles per kind."""
        return dict(sorted(Counter(n.kind for n in self.needles).items()))

    def find(self, texts: Sequence[str]) -> list[list[Needle]]:
        """For each text, the needles it contains (whole-word rules applied)."""
        import polars as pl

        out: list[list[Needle]] = [[] for _ in texts]
        if not texts or not self.needles:
            return out
        series = pl.Series(list(texts), dtype=pl.String)
        for case_sensitive, patterns in ((True, self._sensitive), (False, self._insensitive)):
            if not patterns:
                continue
            found = series.str.extract_many(
                patterns, ascii_case_insensitive=not case_sensitive, overlapping=True
            ).to_list()
            for index, matches in enumerate(found):
                for match in set(matches or ()):
                    key = match if case_sensitive else match.lower()
                    for needle in self._by_value.get((case_sensitive, key), ()):
                        if not needle.whole_word or self._standalone(needle, texts[index]):
                            out[index].append(needle)
        return out

    def find_numbers(self, values: Iterable[int]) -> list[Needle]:
        """Numeric needles among integer cell values."""
        return [self.numeric[v] for v in set(values) if v in self.numeric]

    def _standalone(self, needle: Needle, text: str) -> bool:
        pattern = self._boundaries.get(needle.value)
        if pattern is None:
            after = r"(?!\.?[0-9])" if "." in needle.value else f"(?![{_WORD}])"
            flags = 0 if needle.case_sensitive else re.IGNORECASE
            pattern = re.compile(f"(?<![{_WORD}.])" + re.escape(needle.value) + after, flags)
            self._boundaries[needle.value] = pattern
        return pattern.search(text) is not None


# ----------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Hit:
    """One needle found in one place (a column, chunk, table column or event).

    Attributes:
        where: File relative to the scanned root, ``<catalog>`` table, or event label.
        location: Inside it: ``column x``, ``key-value metadata``, ``tEXt chunk``...
        source: The kind of output: ``parquet_cell``, ``parquet_metadata``, ``text``,
            ``png_text``, ``binary_strings``, ``sqlite``, ``duckdb``, ``event_log``.
        needle_kind: What leaked (``PatientID``, ``path patient id``...).
        needle_masked: Masked value (first character, then ``*``).
        count: Occurrences (cells or texts) in that place.
    """

    where: str
    location: str
    source: str
    needle_kind: str
    needle_masked: str
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-able row (no value in clear)."""
        return {
            "where": self.where,
            "location": self.location,
            "source": self.source,
            "needle_kind": self.needle_kind,
            "needle": self.needle_masked,
            "count": self.count,
        }


@dataclass
class AuditReport:
    """What the audit scanned and found.

    Attributes:
        files_scanned: Files read (any kind).
        tables_scanned: DuckDB and SQLite tables read.
        events_scanned: Event-log texts read.
        needles_by_kind: Distinct needles per kind.
        hits: Every hit (masked).
        skipped: Places that could not be read, with the reason (never silently).
    """

    files_scanned: int = 0
    tables_scanned: int = 0
    events_scanned: int = 0
    needles_by_kind: dict[str, int] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No hit."""
        return not self.hits

    def hits_by_kind(self) -> dict[str, int]:
        """Hits per needle kind."""
        return dict(sorted(Counter(h.needle_kind for h in self.hits).items()))

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"privacy audit: {len(self.hits)} hits in {self.files_scanned} files, "
            f"{self.tables_scanned} tables, {self.events_scanned} events; needles "
            f"{sum(self.needles_by_kind.values())} ({self.needles_by_kind})"
        )


class _Collector:
    """Accumulates hits, counting repeats of (place, needle) instead of listing them."""

    def __init__(self, matcher: NeedleMatcher, report: AuditReport) -> None:
        self.matcher = matcher
        self.report = report
        self._counts: Counter[tuple[str, str, str, Needle]] = Counter()

    def texts(self, where: str, source: str, items: Iterable[tuple[str, str]]) -> None:
        """Scan ``(location, text)`` pairs in batches of bounded size."""
        batch: list[tuple[str, str]] = []
        size = 0
        for location, text in items:
            if not text:
                continue
            batch.append((location, text))
            size += len(text)
            if size >= _BATCH_CHARS:
                self._scan(where, source, batch)
                batch, size = [], 0
        self._scan(where, source, batch)

    def numbers(self, where: str, source: str, location: str, values: Iterable[int]) -> None:
        """Integer cells against numeric needles."""
        for needle in self.matcher.find_numbers(values):
            self._counts[(where, location, source, needle)] += 1

    def _scan(self, where: str, source: str, batch: list[tuple[str, str]]) -> None:
        if not batch:
            return
        found = self.matcher.find([text for _, text in batch])
        for (location, _), needles in zip(batch, found, strict=True):
            for needle in needles:
                self._counts[(where, location, source, needle)] += 1

    def finish(self) -> None:
        """Move the counted hits into the report."""
        for (where, location, source, needle), count in sorted(
            self._counts.items(), key=lambda item: (*item[0][:3], item[0][3].kind)
        ):
            self.report.hits.append(Hit(where, location, source, needle.kind, needle.masked, count))
        self._counts.clear()


# ----------------------------------------------------------------------------------------------
# Readers: each yields (location, text) pairs


def _arrow_texts(array: pa.Array | pa.ChunkedArray) -> tuple[list[str], list[int]]:
    """Distinct string forms and integer values of one column (lists and structs flattened)."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        return _arrow_texts(array.cast(kind.value_type))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _arrow_texts(pc.list_flatten(array))
    if pa.types.is_struct(kind):
        texts: list[str] = []
        numbers: list[int] = []
        chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
        for index in range(kind.num_fields):
            for chunk in chunks:
                more_texts, more_numbers = _arrow_texts(chunk.field(index))
                texts += more_texts
                numbers += more_numbers
        return texts, numbers
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return [v for v in pc.unique(array).to_pylist() if v], []
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return [v.decode("latin-1") for v in pc.unique(array).to_pylist() if v], []
    if pa.types.is_integer(kind):
        if kind.bit_width < 32:
            return [], []  # cannot hold a MIN_NUMERIC_DIGITS-digit id
        return [], [v for v in pc.unique(array).to_pylist() if v is not None]
    if pa.types.is_temporal(kind):
        return [v for v in pc.unique(array.cast(pa.string())).to_pylist() if v], []
    return [], []


def _metadata_texts(schema: pa.Schema) -> list[tuple[str, str]]:
    items = [
        (
            f"key-value metadata {k.decode('latin-1')}",
            f"{k.decode('latin-1')}={v.decode('latin-1')}",
        )
        for k, v in (schema.metadata or {}).items()
    ]
    for schema_field in schema:
        for k, v in (schema_field.metadata or {}).items():
            items.append(
                (
                    f"field {schema_field.name} metadata",
                    f"{k.decode('latin-1')}={v.decode('latin-1')}",
                )
            )
    return items


def png_text_chunks(data: bytes) -> list[tuple[str, str]]:
    """``(chunk type + keyword, text)`` of every tEXt / zTXt / iTXt chunk of a PNG file.

    Raises:
        ValueError: Not a PNG, or a chunk runs past the end of the file.
    """
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG file")
    chunks: list[tuple[str, str]] = []
    offset = 8
    while offset + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        if len(body) != length:
            raise ValueError(f"PNG chunk {ctype!r} at byte {offset} is truncated")
        offset += 12 + length
        if ctype == b"tEXt":
            keyword, _, text = body.partition(b"\0")
            chunks.append((f"tEXt {keyword.decode('latin-1')}", text.decode("latin-1")))
        elif ctype == b"zTXt":
            keyword, _, rest = body.partition(b"\0")
            text = zlib.decompress(rest[1:]).decode("latin-1")
            chunks.append((f"zTXt {keyword.decode('latin-1')}", text))
        elif ctype == b"iTXt":
            keyword, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _, _, rest = rest.partition(b"\0")  # language tag
            translated, _, text_bytes = rest.partition(b"\0")
            if compressed:
                text_bytes = zlib.decompress(text_bytes)
            text = (
                translated.decode("utf-8", "replace") + "\n" + text_bytes.decode("utf-8", "replace")
            )
            chunks.append((f"iTXt {keyword.decode('latin-1')}", text))
        elif ctype == b"IEND":
            break
    return chunks


def _printable_runs(path: Path, limit: int | None = None) -> Iterator[tuple[str, str]]:
    """Printable-ASCII runs of a binary file's first ``limit`` bytes, in chunks."""
    overlap = b""
    left = limit if limit is not None else float("inf")
    with open(path, "rb") as handle:
        while left > 0 and (chunk := handle.read(int(min(_CHUNK_BYTES, left)))):
            left -= len(chunk)
            data = overlap + chunk
            runs = _PRINTABLE_RUN.findall(data)
            if runs:
                yield "bytes", "\n".join(r.decode("ascii") for r in runs)
            overlap = data[-256:]


def _is_text(head: bytes) -> bool:
    return b"\0" not in head


# ----------------------------------------------------------------------------------------------
# Scanners


class PrivacyAuditor:
    """Scans outputs for needles and builds an ``AuditReport``.

    Args:
        needles: What to look for (``needles_from_source`` in production).
        skip_columns: Parquet columns not scanned as text (pixel data).
        binary_limit_bytes: Other binary files (model weights...) are scanned up to this many
            bytes; a larger file's rest is listed in ``skipped``. None = no limit.
    """

    def __init__(
        self,
        needles: Iterable[Needle],
        skip_columns: Iterable[str] = PIXEL_COLUMNS,
        binary_limit_bytes: int | None = DEFAULT_BINARY_LIMIT,
    ) -> None:
        self.binary_limit_bytes = binary_limit_bytes
        self.matcher = NeedleMatcher(needles)
        self.report = AuditReport(needles_by_kind=self.matcher.by_kind())
        self.skip_columns = frozenset(skip_columns)
        self._collector = _Collector(self.matcher, self.report)
        self._seen: set[Path] = set()

    def result(self) -> AuditReport:
        """The report so far (hits sorted by place)."""
        self._collector.finish()
        return self.report

    def scan_tree(
        self, root: Path, exclude: Iterable[str] = (PRIVATE_DIR,), label_prefix: str = ""
    ) -> None:
        """Scan every file under ``root`` except the top-level folders in ``exclude``.

        Files are labelled by their path relative to ``root``, after ``label_prefix``.
        """
        root = Path(root).resolve()
        excluded = set(exclude)
        for folder, dirs, files in os.walk(root, followlinks=False):
            here = Path(folder)
            if here == root:
                dirs[:] = [d for d in dirs if d not in excluded]
            dirs.sort()
            for name in sorted(files):
                path = here / name
                label = label_prefix + path.relative_to(root).as_posix()
                if path.is_symlink():
                    self.report.skipped.append(f"{label}: symbolic link")
                    continue
                self.scan_file(path, label)

    def scan_file(self, path: Path, label: str | None = None) -> None:
        """Scan one file by its kind (Parquet, PNG, SQLite, text, other binary)."""
        path = Path(path).resolve()
        if path in self._seen:
            return
        self._seen.add(path)
        label = label or str(path)
        try:
            with open(path, "rb") as handle:
                head = handle.read(8192)
        except OSError as exc:
            self.report.skipped.append(f"{label}: unreadable ({exc.strerror or exc})")
            return
        self.report.files_scanned += 1
        try:
            if head.startswith(b"PAR1"):
                self._scan_parquet(path, label)
            elif head.startswith(b"\x89PNG"):
                self._collector.texts(label, "png_text", png_text_chunks(path.read_bytes()))
            elif head.startswith(b"SQLite format 3\0"):
                self._scan_sqlite(path, label)
                self._collector.texts(label, "binary_strings", _printable_runs(path))
            elif _is_text(head):
                text = path.read_bytes().decode("utf-8", "replace")
                self._collector.texts(label, "text", [("text", text)])
            else:
                self._scan_binary(path, label)
        except (OSError, ValueError, pa.ArrowException, sqlite3.Error, zlib.error) as exc:
            self.report.skipped.append(f"{label}: {type(exc).__name__}, scanned as bytes")
            self._scan_binary(path, label)

    def _scan_binary(self, path: Path, label: str) -> None:
        limit = self.binary_limit_bytes
        size = path.stat().st_size
        if limit is not None and size > limit:
            self.report.skipped.append(
                f"{label}: only the first {limit >> 20} MiB of {size >> 20} MiB scanned"
            )
        self._collector.texts(label, "binary_strings", _printable_runs(path, limit))

    def _scan_parquet(self, path: Path, label: str) -> None:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        self._collector.texts(label, "parquet_metadata", _metadata_texts(schema))
        columns = [name for name in schema.names if name not in self.skip_columns]
        if not columns:
            return

        def cells() -> Iterator[tuple[str, str]]:
            for batch in parquet.iter_batches(batch_size=8192, columns=columns):
                for name, column in zip(batch.schema.names, batch.columns, strict=True):
                    texts, numbers = _arrow_texts(column)
                    location = f"column {name}"
                    if numbers:
                        self._collector.numbers(label, "parquet_cell", location, numbers)
                    yield from ((location, text) for text in texts)

        self._collector.texts(label, "parquet_cell", cells())

    def _scan_sqlite(self, path: Path, label: str) -> None:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)

        def cells() -> Iterator[tuple[str, str]]:
            tables = [
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            for table in tables:
                self.report.tables_scanned += 1
                quoted = '"' + table.replace('"', '""') + '"'
                cursor = con.execute(f"SELECT * FROM {quoted}")
                names = [d[0] for d in cursor.description]
                for row in cursor:
                    for name, value in zip(names, row, strict=True):
                        if isinstance(value, bytes):
                            value = value.decode("latin-1")
                        if isinstance(value, str) or (isinstance(value, int) and value > 99999):
                            yield f"table {table} column {name}", str(value)

        try:
            self._collector.texts(label, "sqlite", cells())
        finally:
            con.close()

    def scan_duckdb(self, catalog_path: Path, label: str = "<catalog>") -> None:
        """Every column of every base table (cast to text) and every view's SQL."""
        import duckdb

        catalog_path = Path(catalog_path)
        if not catalog_path.exists():
            self.report.skipped.append(f"{label}: {catalog_path.name} does not exist")
            return
        con = duckdb.connect(str(catalog_path), read_only=True)
        try:
            tables = con.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() WHERE NOT internal"
            ).fetchall()
            for schema, table in tables:
                self.report.tables_scanned += 1
                qualified = f'"{schema}"."{table}"'
                columns = [
                    r[0]
                    for r in con.execute(
                        "SELECT column_name FROM duckdb_columns() "
                        "WHERE schema_name = ? AND table_name = ?",
                        [schema, table],
                    ).fetchall()
                ]
                for column in columns:
                    values = con.execute(
                        f'SELECT DISTINCT CAST("{column}" AS VARCHAR) FROM {qualified} '
                        f'WHERE "{column}" IS NOT NULL'
                    ).fetchall()
                    location = f"table {table} column {column}"
                    self._collector.texts(label, "duckdb", ((location, v[0]) for v in values))
            views = con.execute(
                "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
            self._collector.texts(label, "duckdb", ((f"view {n} sql", s) for n, s in views))
        finally:
            con.close()

    def scan_events(self, events: Iterable[tuple[str, str]]) -> None:
        """Event-log texts as ``(label, text)`` pairs (e.g. a serialized Dagster event)."""

        def counted() -> Iterator[tuple[str, str]]:
            for label, text in events:
                self.report.events_scanned += 1
                yield label, text

        self._collector.texts("<event log>", "event_log", counted())


def audit_outputs(
    needles: Iterable[Needle],
    storage_root: Path,
    catalog_path: Path | None = None,
    mlflow_dir: Path | None = None,
    events: Iterable[tuple[str, str]] = (),
    skip_columns: Iterable[str] = PIXEL_COLUMNS,
    binary_limit_bytes: int | None = DEFAULT_BINARY_LIMIT,
) -> AuditReport:
    """Scan a deployment's outputs for ``needles``.

    Args:
        needles: Identifiers to look for (``needles_from_source``).
        storage_root: Every file under it is scanned, except ``private/``.
        catalog_path: The DuckDB catalog, queried table by table (its file is also scanned as
            bytes when it lies under the storage root).
        mlflow_dir: The MLflow store folder, when it lies outside the storage root.
        events: Event-log texts as ``(label, text)``.
        skip_columns: Parquet columns not scanned (pixel data).
        binary_limit_bytes: Bytes scanned per other binary file (see ``PrivacyAuditor``).

    Returns:
        The report: counts, needles per kind, masked hits, and what could not be read.
    """
    auditor = PrivacyAuditor(needles, skip_columns, binary_limit_bytes)
    auditor.scan_tree(storage_root)
    if mlflow_dir is not None and Path(mlflow_dir).is_dir():
        # files already seen under the storage root are not read twice
        auditor.scan_tree(mlflow_dir, exclude=(), label_prefix="<mlflow>/")
    if catalog_path is not None:
        auditor.scan_duckdb(catalog_path)
    auditor.scan_events(events)
    return auditor.result()


def report_json(report: AuditReport) -> str:
    """The report as JSON (masked hits only)."""
    return json.dumps(
        {
            "files_scanned": report.files_scanned,
            "tables_scanned": report.tables_scanned,
            "events_scanned": report.events_scanned,
            "needles_by_kind": report.needles_by_kind,
            "hits": [h.as_dict() for h in report.hits],
            "skipped": report.skipped,
        },
        indent=1,
    )
