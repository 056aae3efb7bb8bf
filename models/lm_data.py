"""Language-model data: stream token shards, build CheXmix sequences, batch them, mask them.

Reading (``iter_token_rows`` / ``iter_positioned_rows``): token shards (``cxr.token_shards``
schema) are read one Parquet row group at a time; nothing loads the whole set. A *read unit* is
one row group of one shard. Worker ``r`` of ``n`` reads units ``r, r + n, r + 2n, ...`` of the
shard list (disjoint parts, no coordination). When there are fewer units than workers (tiny test
sets), every worker reads every unit but keeps only rows ``i % n == r`` of each. Within an epoch
a worker visits its units in order, or in a seeded per-epoch permutation with rows shuffled
inside each unit (``shuffle=True``).

Resuming (``DataPosition``): ``(epoch, unit_index, row_offset)`` points into that worker's plan
for that epoch, so a restored position continues with exactly the next row, without re-reading
earlier row groups.

Sequences (``build_example``): ``<|img|> codes <|/img|> <|endoftext|> report <|img|>``
(``Vocabulary.sequence``) with a per-position modality: image code, report text, or special.

Batches (``collate``): right-padded with ``vocab.pad_id``; ``labels`` are the input ids with
-100 on padding, so padding is never a target.

Stage 2 (``apply_stage2_masking``): per sample, a ratio is drawn for image codes and one for
report tokens; exactly ``round(ratio * count)`` of them are replaced by ``vocab.mask_id`` in the
input. Special tokens and padding are never masked; labels stay the original tokens.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from models.vocabulary import Vocabulary

__all__ = [
    "DEFAULT_COLUMNS",
    "IGNORE_INDEX",
    "MODALITY_IMAGE",
    "MODALITY_PAD",
    "MODALITY_SPECIAL",
    "MODALITY_TEXT",
    "BatchFactory",
    "DataPosition",
    "InMemoryBatches",
    "ReadUnit",
    "TokenShardBatches",
    "apply_stage2_masking",
    "build_example",
    "collate",
    "iter_eval_batches",
    "iter_positioned_rows",
    "iter_token_rows",
    "plan_read_units",
    "shard_paths_from_manifest",
]

IGNORE_INDEX = -100
MODALITY_PAD = 0
MODALITY_IMAGE = 1
MODALITY_TEXT = 2
MODALITY_SPECIAL = 3
DEFAULT_COLUMNS = ("image_id", "study_id", "split", "image_codes", "text_ids")
MANIFEST_NAME = "_manifest.json"


# ----------------------------------------------------------------------------------------------
# Reading


def shard_paths_from_manifest(tokens_dir: str | Path, verify: bool = False) -> list[Path]:
    """Shard paths listed in a token shard set's ``_manifest.json``, in manifest order.

    Args:
        tokens_dir: Folder with ``shard-NNNNN.parquet`` files and ``_manifest.json``.
        verify: Re-hash every shard against the manifest first (``verify_shard_set``).

    Returns:
        Absolute shard paths.

    Raises:
        FileNotFoundError: No manifest (the set is incomplete), or (``verify``) a listed shard
            is missing.
        ValueError: The manifest is unreadable, or (``verify``) a shard's sha256 differs from
            the manifest's; the message names the file.
    """
    tokens_dir = Path(tokens_dir)
    path = tokens_dir / MANIFEST_NAME
    try:
        if verify:
            from cxr.token_shards import verify_shard_set

            manifest = verify_shard_set(tokens_dir)
        else:
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: the token shard set is incomplete")
            manifest = json.loads(path.read_text())
        return [(tokens_dir / s["path"]).resolve() for s in manifest["shards"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"token shard manifest {path} is unreadable: {exc!r}") from exc


@dataclass(frozen=True)
class ReadUnit:
    """One row group of one shard.

    Attributes:
        shard_index: Index of the shard in the shard list.
        row_group: Row group index inside the shard.
        num_rows: Rows in the row group (all splits).
    """

    shard_index: int
    row_group: int
    num_rows: int


@dataclass(frozen=True)
class DataPosition:
    """Where a worker's row stream stands; restoring it resumes with exactly the next row.

    Attributes:
        epoch: Pass over the worker's part of the data (0-based).
        unit_index: Index into the worker's ordered list of read units for ``epoch`` (its
            shard / row-group plan; see ``plan_read_units``).
        row_offset: Rows of the wanted split already consumed from that unit (after the
            per-unit shuffle and worker striding).
        rows_seen: Rows yielded since the stream started at epoch 0 (informational).
    """

    epoch: int = 0
    unit_index: int = 0
    row_offset: int = 0
    rows_seen: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataPosition:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: int(v) for k, v in data.items()})


def plan_read_units(
    shard_paths: Sequence[str | Path], worker_rank: int = 0, num_workers: int = 1
) -> tuple[list[ReadUnit], int]:
    """The read units of one worker (reads Parquet footers only).

    Args:
        shard_paths: Token shards, in a fixed order shared by all workers.
        worker_rank: This worker, in ``[0, num_workers)``.
        num_workers: Number of workers splitting the data.

    Returns:
        ``(units, row_stride)``: with at least ``num_workers`` units, every ``num_workers``-th
        unit starting at ``worker_rank`` and stride 1; otherwise all units and stride
        ``num_workers`` (keep rows ``i % num_workers == worker_rank`` of each unit).
    """
    if not 0 <= worker_rank < num_workers:
        raise ValueError(f"worker_rank {worker_rank} not in [0, {num_workers})")
    units = []
    for index, path in enumerate(shard_paths):
        meta = pq.ParquetFile(path).metadata
        for group in range(meta.num_row_groups):
            units.append(ReadUnit(index, group, meta.row_group(group).num_rows))
    if len(units) >= num_workers:
        return units[worker_rank::num_workers], 1
    return units, num_workers


def _epoch_order(num_units: int, epoch: int, shuffle: bool, seed: int) -> list[int]:
    if not shuffle:
        return list(range(num_units))
    return np.random.default_rng([seed, epoch, 7919]).permutation(num_units).tolist()


def _unit_rows(
    table: pa.Table,
    split: str | None,
    unit: ReadUnit,
    epoch: int,
    shuffle: bool,
    seed: int,
    worker_rank: int,
    row_stride: int,
) -> np.ndarray:
    """Row indices of ``table`` this worker takes, in the order it takes them."""
    if split is None:
        rows = np.arange(table.num_rows)
    else:
        keep = pc.equal(table.column("split"), split).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(keep)
    if row_stride > 1:
        rows = rows[worker_rank::row_stride]
    if shuffle and rows.size:
        rng = np.random.default_rng([seed, epoch, unit.shard_index, unit.row_group])
        rows = rows[rng.permutation(rows.size)]
    return rows


def _table_rows(table: pa.Table, indices: np.ndarray) -> Iterator[dict[str, Any]]:
    """Rows of ``table`` at ``indices`` as dicts; code and text columns as numpy arrays."""
    columns: dict[str, Any] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name == "image_codes":
            width = col.type.list_size
            columns[name] = col.flatten().to_numpy().reshape(-1, width)
        elif name == "text_ids":
            offsets = col.offsets.to_numpy()
            values = col.values.to_numpy()
            columns[name] = (offsets, values)
        else:
            columns[name] = col.to_pylist()
    for i in indices.tolist():
        row: dict[str, Any] = {}
        for name, value in columns.items():
            if name == "image_codes":
                row[name] = value[i]
            elif name == "text_ids":
                offsets, values = value
                row[name] = values[offsets[i] : offsets[i + 1]]
            else:
                row[name] = value[i]
        yield row


def iter_positioned_rows(
    shard_paths: Sequence[str | Path],
    split: str | None,
    worker_rank: int = 0,
    num_workers: int = 1,
    start: DataPosition | None = None,
    shuffle: bool = False,
    seed: int = 0,
    epochs: int | None = 1,
    columns: Sequence[str] = DEFAULT_COLUMNS,
) -> Iterator[tuple[dict[str, Any], DataPosition]]:
    """Rows of one split for one worker, each with the position right after it.

    Args:
        shard_paths: Token shards (same order on every worker).
        split: Split to keep (``"train"``, ``"validate"``, ``"test"``); None keeps every row.
        worker_rank: This worker.
        num_workers: Workers splitting the data.
        start: Position to resume from (default: the beginning of epoch 0).
        shuffle: Per-epoch seeded permutation of units and of rows inside each unit.
        seed: Shuffle seed (the same on every worker).
        epochs: Stop after this epoch count (counted from epoch 0, not from ``start``); None
            cycles forever.
        columns: Columns to read (``split`` is added when filtering).

    Yields:
        ``(row, position)``: row dict (``image_codes`` (N,) int16 and ``text_ids`` (T,) int32
        numpy arrays, other columns as Python values) and the position after it.

    Raises:
        ValueError: With ``epochs=None``, a whole epoch yields no row for this worker.
    """
    units, stride = plan_read_units(shard_paths, worker_rank, num_workers)
    pos = start or DataPosition()
    read_columns = list(dict.fromkeys([*columns, *(["split"] if split is not None else [])]))
    files: dict[int, pq.ParquetFile] = {}
    epoch = pos.epoch
    while epochs is None or epoch < epochs:
        order = _epoch_order(len(units), epoch, shuffle, seed)
        first_unit = pos.unit_index if epoch == pos.epoch else 0
        yielded = False
        rows_seen = pos.rows_seen
        for unit_index in range(first_unit, len(order)):
            unit = units[order[unit_index]]
            if unit.shard_index not in files:
                files[unit.shard_index] = pq.ParquetFile(shard_paths[unit.shard_index])
            table = files[unit.shard_index].read_row_group(unit.row_group, columns=read_columns)
            rows = _unit_rows(table, split, unit, epoch, shuffle, seed, worker_rank, stride)
            skip = pos.row_offset if (epoch == pos.epoch and unit_index == pos.unit_index) else 0
            for offset, row in enumerate(_table_rows(table, rows[skip:]), start=skip + 1):
                rows_seen += 1
                yielded = True
                if offset == rows.size:  # the unit is exhausted: point at the next one
                    after = DataPosition(epoch, unit_index + 1, 0, rows_seen)
                else:
                    after = DataPosition(epoch, unit_index, offset, rows_seen)
                yield row, after
            pos = DataPosition(epoch, unit_index + 1, 0, rows_seen)
        if not yielded and epochs is None and first_unit == 0:
            raise ValueError(
                f"worker {worker_rank}/{num_workers} has no rows of split {split!r} in "
                f"{len(shard_paths)} shard(s): use fewer workers or more row groups"
            )
        epoch += 1
        pos = DataPosition(epoch, 0, 0, rows_seen)


def iter_token_rows(
    shard_paths: Sequence[str | Path],
    split: str | None,
    worker_rank: int = 0,
    num_workers: int = 1,
    start_row: int = 0,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    columns: Sequence[str] = DEFAULT_COLUMNS,
) -> Iterator[dict[str, Any]]:
    """One epoch of one split's rows for one worker, skipping its first ``start_row`` rows.

    Whole row groups before ``start_row`` are skipped after reading only their ``split``
    column. See ``iter_positioned_rows`` for the arguments and the row format.
    """
    units, stride = plan_read_units(shard_paths, worker_rank, num_workers)
    order = _epoch_order(len(units), epoch, shuffle, seed)
    remaining = start_row
    start = DataPosition(epoch, len(order), 0, 0)
    for unit_index, unit_id in enumerate(order):
        unit = units[unit_id]
        file = pq.ParquetFile(shard_paths[unit.shard_index])
        if split is None:
            count = len(range(worker_rank if stride > 1 else 0, unit.num_rows, stride))
        else:
            table = file.read_row_group(unit.row_group, columns=["split"])
            count = _unit_rows(table, split, unit, epoch, False, seed, worker_rank, stride).size
        if remaining < count:
            start = DataPosition(epoch, unit_index, remaining, 0)
            break
        remaining -= count
    for row, _ in iter_positioned_rows(
        shard_paths, split, worker_rank, num_workers, start, shuffle, seed, epoch + 1, columns
    ):
        yield row


# ----------------------------------------------------------------------------------------------
# Sequences and batches


def build_example(row: dict[str, Any], vocab: Vocabulary, max_text_tokens: int) -> dict[str, Any]:
    """The CheXmix sequence of one row, with a modality per position.

    The report is truncated to its first ``max_text_tokens`` tokens; the closing ``<|img|>``
    is always kept.

    Args:
        row: Has ``image_codes`` (N,) raw codes and ``text_ids`` (T,) report ids without
            specials.
        vocab: Id layout.
        max_text_tokens: Report tokens kept (>= 0).

    Returns:
        ``input_ids`` int64 (N + T' + 4,), ``modality`` int8 (same length; ``MODALITY_IMAGE``
        for codes, ``MODALITY_TEXT`` for report tokens, ``MODALITY_SPECIAL`` for the four
        structural tokens), where ``T' = min(T, max_text_tokens)``.

    Raises:
        ValueError: A code or text id is out of range.
    """
    if max_text_tokens < 0:
        raise ValueError(f"max_text_tokens must be >= 0, got {max_text_tokens}")
    codes = np.asarray(row["image_codes"]).reshape(-1)
    text = np.asarray(row["text_ids"], dtype=np.int64)[:max_text_tokens]
    if text.size and (text.min() < 0 or text.max() >= vocab.text_vocab_size):
        raise ValueError(
            f"text ids must lie in [0, {vocab.text_vocab_size}), got [{text.min()}, {text.max()}]"
        )
    ids = vocab.sequence(codes, text)
    n, t = codes.size, text.size
    modality = np.full(ids.shape, MODALITY_SPECIAL, dtype=np.int8)
    modality[1 : 1 + n] = MODALITY_IMAGE
    modality[n + 3 : n + 3 + t] = MODALITY_TEXT
    return {"input_ids": torch.from_numpy(ids), "modality": torch.from_numpy(modality)}


def collate(
    examples: Sequence[dict[str, Any]], vocab: Vocabulary, pad_to_multiple_of: int = 1
) -> dict[str, torch.Tensor]:
    """Right-pad examples into a batch.

    Args:
        examples: Outputs of ``build_example``.
        vocab: Id layout (``pad_id``).
        pad_to_multiple_of: Round the padded length up to a multiple of this.

    Returns:
        ``input_ids`` int64 (B, L) padded with ``vocab.pad_id``; ``attention_mask`` int64
        (B, L), 1 on real tokens; ``labels`` int64 (B, L), the input ids with -100 on padding
        (the loss shifts them: position t predicts ``labels[t + 1]``); ``image_mask`` and
        ``text_mask`` bool (B, L), image-code and report-text positions (specials and padding
        are in neither).
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    lengths = [int(e["input_ids"].numel()) for e in examples]
    length = -(-max(lengths) // pad_to_multiple_of) * pad_to_multiple_of
    batch = len(examples)
    input_ids = torch.full((batch, length), vocab.pad_id, dtype=torch.long)
    modality = torch.full((batch, length), MODALITY_PAD, dtype=torch.int8)
    for i, e in enumerate(examples):
        input_ids[i, : lengths[i]] = torch.as_tensor(e["input_ids"], dtype=torch.long)
        modality[i, : lengths[i]] = torch.as_tensor(e["modality"], dtype=torch.int8)
    real = modality != MODALITY_PAD
    return {
        "input_ids": input_ids,
        "attention_mask": real.long(),
        "labels": input_ids.masked_fill(~real, IGNORE_INDEX),
        "image_mask": modality == MODALITY_IMAGE,
        "text_mask": modality == MODALITY_TEXT,
    }


def _choose_exactly(
    eligible: torch.Tensor, ratios: torch.Tensor, rng: torch.Generator
) -> torch.Tensor:
    """Per row, ``round(ratio * eligible.sum())`` eligible positions chosen uniformly."""
    counts = eligible.sum(dim=1)
    k = torch.round(ratios.double() * counts.double()).long().clamp(max=counts)
    scores = torch.rand(eligible.shape, generator=rng, device=rng.device).to(eligible.device)
    scores = scores.masked_fill(~eligible, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < k[:, None]) & eligible


def apply_stage2_masking(
    batch: dict[str, torch.Tensor],
    vocab: Vocabulary,
    rng: torch.Generator,
    image_ratio_range: tuple[float, float] = (0.0, 0.8),
    text_ratio_range: tuple[float, float] = (0.0, 0.8),
) -> tuple[torch.Tensor, torch.Tensor]:
    """CheXmix stage-2 input corruption: mask a random fraction of image and report tokens.

    Per sample, an image ratio and a text ratio are drawn uniformly from their ranges and
    exactly ``round(ratio * count)`` image-code (resp. report-text) positions, chosen uniformly,
    get ``vocab.mask_id``. The batch is not modified: labels stay the original tokens.

    Args:
        batch: Output of ``collate`` (``input_ids``, ``image_mask``, ``text_mask`` (B, L)).
        vocab: Id layout (``mask_id``).
        rng: Generator for the ratios and positions (CPU generator; results are moved to the
            batch's device).
        image_ratio_range: ``(low, high)`` within [0, 1] for image codes.
        text_ratio_range: ``(low, high)`` within [0, 1] for report tokens.

    Returns:
        ``(masked_input_ids, masked_positions)``: int64 (B, L) and bool (B, L).
    """
    for name, (low, high) in (("image", image_ratio_range), ("text", text_ratio_range)):
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"{name}_ratio_range must satisfy 0 <= low <= high <= 1")
    input_ids = batch["input_ids"]
    b = input_ids.shape[0]
    lo_i, hi_i = image_ratio_range
    lo_t, hi_t = text_ratio_range
    image_ratios = lo_i + (hi_i - lo_i) * torch.rand(b, generator=rng, dtype=torch.float64)
    text_ratios = lo_t + (hi_t - lo_t) * torch.rand(b, generator=rng, dtype=torch.float64)
    image_pos = _choose_exactly(batch["image_mask"].cpu(), image_ratios, rng)
    text_pos = _choose_exactly(batch["text_mask"].cpu(), text_ratios, rng)
    masked = (image_pos | text_pos).to(input_ids.device)
    return input_ids.masked_fill(masked, vocab.mask_id), masked


# ----------------------------------------------------------------------------------------------
# Batch factories (what ``train_lm`` consumes)


class BatchFactory:
    """Resumable source of training batches for ``models.lm_train.train_lm``.

    Calling the factory with a ``DataPosition`` returns an endless iterator of
    ``(batch, position_after_batch)``, where ``batch`` is a ``collate`` output.
    """

    vocab: Vocabulary
    batch_size: int
    max_text_tokens: int

    def rows(self, start: DataPosition) -> Iterator[tuple[dict[str, Any], DataPosition]]:
        """Endless ``(row, position_after_row)`` stream starting at ``start``."""
        raise NotImplementedError

    def __call__(
        self, start: DataPosition | None = None
    ) -> Iterator[tuple[dict[str, torch.Tensor], DataPosition]]:
        """Endless ``(batch, position_after_batch)`` stream starting at ``start``."""
        examples: list[dict[str, Any]] = []
        for row, pos in self.rows(start or DataPosition()):
            examples.append(build_example(row, self.vocab, self.max_text_tokens))
            if len(examples) == self.batch_size:
                yield collate(examples, self.vocab), pos
                examples = []


class TokenShardBatches(BatchFactory):
    """Batches of one worker's part of a token shard set, cycling over epochs.

    Args:
        shard_paths: Token shards (same order on every worker).
        vocab: Id layout.
        batch_size: Sequences per batch (per worker).
        max_text_tokens: Report tokens kept per sequence.
        split: Split to train on.
        worker_rank: This worker.
        num_workers: Workers splitting the data.
        shuffle: Seeded per-epoch shuffle of row groups and rows.
        seed: Shuffle seed.
    """

    def __init__(
        self,
        shard_paths: Sequence[str | Path],
        vocab: Vocabulary,
        batch_size: int,
        max_text_tokens: int,
        split: str = "train",
        worker_rank: int = 0,
        num_workers: int = 1,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shard_paths = [Path(p) for p in shard_paths]
        if not self.shard_paths:
            raise ValueError("TokenShardBatches needs at least one shard")
        self.vocab = vocab
        self.batch_size = batch_size
        self.max_text_tokens = max_text_tokens
        self.split = split
        self.worker_rank = worker_rank
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed

    def rows(self, start: DataPosition) -> Iterator[tuple[dict[str, Any], DataPosition]]:
        """Endless row stream of this worker (see ``iter_positioned_rows``)."""
        return iter_positioned_rows(
            self.shard_paths,
            self.split,
            self.worker_rank,
            self.num_workers,
            start=start,
            shuffle=self.shuffle,
            seed=self.seed,
            epochs=None,
            columns=("image_codes", "text_ids"),
        )


class InMemoryBatches(BatchFactory):
    """Batches cycling over a fixed list of rows (tests, overfitting checks, small demos).

    Args:
        rows: Row dicts with ``image_codes`` and ``text_ids``.
        vocab: Id layout.
        batch_size: Sequences per batch.
        max_text_tokens: Report tokens kept per sequence.
        shuffle: Seeded per-epoch permutation of the rows.
        seed: Shuffle seed.
    """

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        vocab: Vocabulary,
        batch_size: int,
        max_text_tokens: int = 1 << 30,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if not rows:
            raise ValueError("InMemoryBatches needs at least one row")
        self.data = list(rows)
        self.vocab = vocab
        self.batch_size = batch_size
        self.max_text_tokens = max_text_tokens
        self.shuffle = shuffle
        self.seed = seed

    def rows(self, start: DataPosition) -> Iterator[tuple[dict[str, Any], DataPosition]]:
        """Endless row stream; ``row_offset`` indexes the epoch's row order."""
        epoch, offset, seen = start.epoch, start.row_offset, start.rows_seen
        while True:
            order = _epoch_order(len(self.data), epoch, self.shuffle, self.seed)
            for i in range(offset, len(order)):
                seen += 1
                if i + 1 == len(order):
                    yield self.data[order[i]], DataPosition(epoch + 1, 0, 0, seen)
                else:
                    yield self.data[order[i]], DataPosition(epoch, 0, i + 1, seen)
            epoch, offset = epoch + 1, 0


def iter_eval_batches(
    source: Sequence[str | Path] | Sequence[dict[str, Any]],
    vocab: Vocabulary,
    batch_size: int,
    max_text_tokens: int,
    split: str | None = "validate",
    max_rows: int | None = None,
) -> Iterable[dict[str, torch.Tensor]]:
    """One ordered pass over a split (shard paths) or a list of rows, as batches.

    Args:
        source: Token shard paths, or row dicts (then ``split`` is ignored).
        vocab: Id layout.
        batch_size: Sequences per batch (the last batch may be smaller).
        max_text_tokens: Report tokens kept per sequence.
        split: Split to read from shards, one of ``cxr.splits.SPLITS`` (default ``validate``),
            or None for all rows.
        max_rows: Stop after this many rows.

    Yields:
        ``collate`` outputs.

    Raises:
        ValueError: ``split`` is not a split name (e.g. ``val``, which would match no row).
    """
    from cxr.splits import SPLITS

    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    if source and isinstance(source[0], dict):
        rows: Iterable[dict[str, Any]] = source  # type: ignore[assignment]
    else:
        rows = iter_token_rows(source, split, columns=("image_codes", "text_ids"))  # type: ignore[arg-type]
    examples: list[dict[str, Any]] = []
    for count, row in enumerate(rows):
        if max_rows is not None and count >= max_rows:
            break
        examples.append(build_example(row, vocab, max_text_tokens))
        if len(examples) == batch_size:
            yield collate(examples, vocab)
            examples = []
    if examples:
        yield collate(examples, vocab)
