"""What every benchmark reads: one split's rows from the token shards, bounded in memory.

A row is one image: ``image_id``, ``study_id``, ``patient_id``, raw ``image_codes`` (N,),
report ``text_ids`` (no specials) and the 14 CheXpert labels (1 / 0 / -1 / None). A split is
capped at ``max_rows`` rows chosen by a salted hash of the image id, so the same images are
picked on every run and every checkpoint, and memory never grows with the archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr.labeler import OBSERVATIONS, UNCERTAINTY_POLICIES
from cxr.token_shards import LABEL_COLUMNS
from models.lm_data import iter_token_rows
from models.vocabulary import Vocabulary

ROW_COLUMNS = (
    "image_id",
    "study_id",
    "patient_id",
    "is_frontal",
    "image_codes",
    "text_ids",
    *LABEL_COLUMNS,
)

#: How an uncertain mention (-1) becomes an evaluation target follows the policies of
#: ``cxr.labeler.UNCERTAINTY_POLICIES``, which also make the ``finding_labels`` training
#: targets, so evaluation scores the labels as they were trained. ``u_ones``: positive
#: (CheXpert's U-Ones, the default); ``u_zeros``: negative; ``ignore``: the image is left out of
#: that observation only. Not mentioned is negative under every policy.
DEFAULT_UNCERTAINTY_POLICY = "u_ones"
VIEWS = ("frontal", "all")


@dataclass
class EvalRows:
    """One split's evaluation rows, sorted by image id.

    Attributes:
        image_ids: (M,) image pseudonyms.
        study_ids: (M,) study pseudonyms (a report belongs to a study).
        patient_ids: (M,) patient pseudonyms (bootstrap resampling unit).
        codes: int64 (M, N) raw image codes.
        text_ids: M report id lists (without specials).
        labels: float32 (M, 14) raw CheXpert labels in ``OBSERVATIONS`` order (1 positive,
            0 negative, -1 uncertain), NaN = not mentioned.
        total_rows: Rows of the split before the cap.
        is_frontal: bool (M,) frontal view (PA/AP); None = unknown (all taken as frontal).
    """

    image_ids: list[str]
    study_ids: list[str]
    patient_ids: list[str]
    codes: np.ndarray
    text_ids: list[list[int]]
    labels: np.ndarray
    total_rows: int
    is_frontal: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def positives(self) -> np.ndarray:
        """Bool (M, 14): the observation is positive (uncertain and absent count as negative)."""
        return self.labels == 1.0

    def targets(self, policy: str = DEFAULT_UNCERTAINTY_POLICY) -> np.ndarray:
        """Float32 (M, 14) evaluation targets: 1 / 0, NaN = left out of that observation.

        Positive is 1, negative and not mentioned are 0, uncertain follows ``policy`` (see
        ``UNCERTAINTY_POLICIES``), exactly as ``cxr.labeler.apply_uncertainty_policy`` maps
        the training targets (except that not mentioned counts as negative here).
        """
        return uncertainty_targets(self.labels, policy)

    def views(self, views: str) -> EvalRows:
        """The rows of ``views``: ``frontal`` (PA/AP images only) or ``all``."""
        if views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
        if views == "all" or self.is_frontal is None:
            return self
        return self.subset(np.flatnonzero(self.is_frontal))

    def subset(self, index: np.ndarray | Sequence[int]) -> EvalRows:
        """Rows at ``index`` (in that order)."""
        index = np.asarray(index, dtype=np.int64)
        return EvalRows(
            image_ids=[self.image_ids[i] for i in index],
            study_ids=[self.study_ids[i] for i in index],
            patient_ids=[self.patient_ids[i] for i in index],
            codes=self.codes[index],
            text_ids=[self.text_ids[i] for i in index],
            labels=self.labels[index],
            total_rows=self.total_rows,
            is_frontal=None if self.is_frontal is None else self.is_frontal[index],
        )


def uncertainty_targets(labels: np.ndarray, policy: str) -> np.ndarray:
    """Raw labels (1 / 0 / -1 / NaN) -> targets (1 / 0 / NaN = excluded) under ``policy``."""
    if policy not in UNCERTAINTY_POLICIES:
        raise ValueError(
            f"uncertainty policy must be one of {UNCERTAINTY_POLICIES}, got {policy!r}"
        )
    labels = np.asarray(labels, dtype=np.float32)
    uncertain = {"u_ones": 1.0, "u_zeros": 0.0, "ignore": np.nan}[policy]
    out = np.where(labels == 1.0, 1.0, 0.0).astype(np.float32)
    out[labels == -1.0] = uncertain
    return out


def policy_of_labels(labels_path: str | Path) -> str | None:
    """The uncertainty policy ``finding_labels`` built its ``target_*`` columns with.

    Read off the first uncertain mention (raw -1) and its training target (1: ``u_ones``,
    0: ``u_zeros``, null: ``ignore``); None when no mention is uncertain.
    """
    import pyarrow.parquet as pq

    file = pq.ParquetFile(labels_path)
    columns = [c for c in LABEL_COLUMNS if f"target_{c}" in file.schema_arrow.names]
    for batch in file.iter_batches(
        batch_size=8192, columns=[*columns, *(f"target_{c}" for c in columns)]
    ):
        for c in columns:
            raw = batch.column(c).to_numpy(zero_copy_only=False)
            hits = np.flatnonzero(raw == -1.0)
            if hits.size:
                target = batch.column(f"target_{c}")[int(hits[0])].as_py()
                return {1.0: "u_ones", 0.0: "u_zeros", None: "ignore"}[target]
    return None


def patient_subset(rows: EvalRows, max_images: int | None, salt: str = "eval-train") -> EvalRows:
    """At most ``max_images`` rows, whole patients first, the same ones on every run.

    Patients are taken in the order of ``sha256(salt|patient_id)`` until the cap; only the last
    patient may be cut. Used to bound probe fitting on TRAIN whatever the TRAIN size.
    """
    if max_images is None or len(rows) <= max_images:
        return rows
    order = sorted(
        range(len(rows)),
        key=lambda i: (
            _selection_key(rows.patient_ids[i], salt),
            _selection_key(rows.image_ids[i], salt),
        ),
    )
    return rows.subset(sorted(order[:max_images]))


def _selection_key(image_id: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}|{image_id}".encode()).digest()[:8], "big")


def load_split(
    shard_paths: Sequence[str | Path],
    split: str,
    max_rows: int | None = None,
    salt: str = "eval",
    by_patient: bool = False,
) -> EvalRows:
    """Stream ``split`` from the token shards, keeping at most ``max_rows`` rows.

    Args:
        shard_paths: Token shard files (from the manifest).
        split: ``train``, ``validate`` or ``test``.
        max_rows: Cap (None: all rows). The kept rows are those with the smallest
            ``sha256(salt|image_id)``: a stable, unbiased sample held in a bounded heap.
        salt: Selection salt.
        by_patient: Rank by ``sha256(salt|patient_id)`` first, so the cap keeps whole
            patients (only the last one may be cut): a patient-level subset.

    Raises:
        ValueError: The split has no rows, or is not a split name.
    """
    from cxr.splits import SPLITS

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    heap: list[tuple[tuple[int, ...], int, dict[str, Any]]] = []  # max-heap on the key
    total = 0
    for total, row in enumerate(iter_token_rows(shard_paths, split, columns=ROW_COLUMNS), 1):
        key = (_selection_key(row["image_id"], salt),)
        if by_patient:
            key = (_selection_key(row["patient_id"], salt), *key)
        item = (tuple(-k for k in key), total, row)
        if max_rows is None or len(heap) < max_rows:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    if not total:
        raise ValueError(f"split {split!r} has no rows in {len(shard_paths)} token shard(s)")
    rows = sorted((entry[2] for entry in heap), key=lambda r: r["image_id"])
    labels = np.array(
        [[np.nan if r[c] is None else float(r[c]) for c in LABEL_COLUMNS] for r in rows],
        dtype=np.float32,
    ).reshape(len(rows), len(OBSERVATIONS))
    return EvalRows(
        image_ids=[r["image_id"] for r in rows],
        study_ids=[r["study_id"] for r in rows],
        patient_ids=[r["patient_id"] for r in rows],
        codes=np.stack([np.asarray(r["image_codes"], dtype=np.int64) for r in rows]),
        text_ids=[list(map(int, r["text_ids"])) for r in rows],
        labels=labels,
        total_rows=total,
        is_frontal=np.array([bool(r.get("is_frontal", True)) for r in rows], dtype=bool),
    )


# ----------------------------------------------------------------------------------------------
# Masking image tokens for evaluation (deterministic per image)


def mask_positions(
    image_id: str, num_codes: int, ratio: float, seed: int, pattern: str = "random"
) -> np.ndarray:
    """Which of an image's codes are masked, the same on every run and in every batch.

    Args:
        image_id: Image pseudonym (part of the seed, so masks differ across images).
        num_codes: Codes per image (a square grid for ``block``).
        ratio: Fraction in [0, 1].
        seed: Evaluation seed.
        pattern: ``random`` (exactly ``round(ratio * num_codes)`` positions, uniform) or
            ``block`` (one square of side ``round(sqrt(ratio) * grid)`` at a random place).

    Returns:
        bool (num_codes,).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    digest = hashlib.sha256(f"{seed}|{pattern}|{ratio:.4f}|{image_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    mask = np.zeros(num_codes, dtype=bool)
    if pattern == "random":
        count = round(ratio * num_codes)
        mask[rng.choice(num_codes, size=count, replace=False)] = True
    elif pattern == "block":
        grid = round(num_codes**0.5)
        if grid * grid != num_codes:
            raise ValueError(f"block masking needs a square code grid, got {num_codes} codes")
        side = round(ratio**0.5 * grid)
        if side:
            top, left = rng.integers(0, grid - side + 1, size=2)
            square = np.zeros((grid, grid), dtype=bool)
            square[top : top + side, left : left + side] = True
            mask = square.reshape(-1)
    else:
        raise ValueError(f"mask pattern must be 'random' or 'block', got {pattern!r}")
    return mask


def image_prefix_ids(
    codes: np.ndarray, masks: np.ndarray | None, vocab: Vocabulary, with_eot: bool = False
) -> torch.Tensor:
    """``<|img|> codes <|/img|> [<|endoftext|>]`` per row, masked codes replaced by the mask id.

    Args:
        codes: int (B, N) raw codes.
        masks: bool (B, N) or None.
        vocab: Id layout.
        with_eot: Append ``<|endoftext|>`` (the report prompt).

    Returns:
        int64 (B, N + 2 [+ 1]).
    """
    ids = torch.as_tensor(vocab.image_ids(codes), dtype=torch.long)
    if masks is not None:
        ids = ids.masked_fill(torch.as_tensor(masks, dtype=torch.bool), vocab.mask_id)
    b = ids.shape[0]
    parts = [
        torch.full((b, 1), vocab.image_start_id),
        ids,
        torch.full((b, 1), vocab.image_end_id),
    ]
    if with_eot:
        parts.append(torch.full((b, 1), vocab.eot_id))
    return torch.cat(parts, dim=1)


#: Called as ``sink(rows done, rows in the pass)`` after each batch of :func:`batches`, when a
#: caller asked for progress with :func:`batch_progress` (observability only: no results depend
#: on it).
_batch_progress: ContextVar[Callable[[int, int], None] | None] = ContextVar(
    "batch_progress", default=None
)


@contextlib.contextmanager
def batch_progress(sink: Callable[[int, int], None]) -> Iterator[None]:
    """Report every batch of the evaluation loops run inside the block to ``sink``."""
    token = _batch_progress.set(sink)
    try:
        yield
    finally:
        _batch_progress.reset(token)


def batches(count: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(count)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sink = _batch_progress.get()
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        yield slice(start, stop)
        if sink is not None:
            sink(stop, count)


def load_pixels(image_shard_paths: Sequence[str | Path], image_ids: Sequence[str]) -> np.ndarray:
    """The decoded uint8 images of ``image_ids`` from the ``cxr_images`` shards, in that order.

    Only the listed images are read (a filtered scan of the shards).

    Returns:
        uint8 (M, H, W).

    Raises:
        KeyError: An image id is not in the shards.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    wanted = list(image_ids)
    dataset = ds.dataset([str(p) for p in image_shard_paths], format="parquet")
    table = dataset.to_table(
        columns=["image_id", "height", "width", "pixels"],
        filter=pc.field("image_id").isin(wanted),
    )
    found = {}
    for image_id, h, w, buf in zip(
        table["image_id"].to_pylist(),
        table["height"].to_pylist(),
        table["width"].to_pylist(),
        table["pixels"].to_pylist(),
        strict=True,
    ):
        found[image_id] = np.frombuffer(buf, dtype=np.uint8).reshape(h, w)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise KeyError(f"{len(missing)} image(s) not in the image shards, e.g. {missing[0]}")
    return np.stack([found[i] for i in wanted])
