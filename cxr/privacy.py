"""Pseudonymisation of identifiers that leave ingest.

Patient ids, study/series/instance UIDs, accession numbers and path-derived ids (MIMIC subject
and study ids, dicom ids) only ever leave ingest as keyed hashes: HMAC-SHA256 under a secret salt,
truncated to 80 bits and prefixed by the kind of id (``pat_``, ``stu_``, ``img_``). The same salt
gives the same pseudonym on every run, so joins and splits are stable; without the salt the raw id
cannot be recovered or confirmed by brute force over the (small) id space.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

SALT_ENV_VAR = "CHEXMIX_ID_SALT"
MIN_SALT_LENGTH = 16
_PREFIXES = {
    "patient": "pat",
    "study": "stu",
    "series": "ser",
    "image": "img",
    "file": "fil",
    "accession": "acc",
}


@dataclass(frozen=True)
class Pseudonymizer:
    """Keyed hashing of raw identifiers.

    Attributes:
        salt: Secret key; at least 16 characters.
    """

    salt: str

    def __post_init__(self) -> None:
        if len(self.salt) < MIN_SALT_LENGTH:
            raise ValueError(
                f"the id salt must have at least {MIN_SALT_LENGTH} characters, got {len(self.salt)}"
            )

    def __repr__(self) -> str:  # never print the salt
        return "Pseudonymizer(salt=<hidden>)"

    def hash_id(self, kind: str, raw: str) -> str:
        """Pseudonym for ``raw`` of the given kind (patient, study, series, image, file).

        Args:
            kind: Which namespace the id lives in; the same raw string in two namespaces gives
                two unrelated pseudonyms.
            raw: The identifier in clear. Surrounding whitespace is ignored.

        Returns:
            ``"<prefix>_<20 hex digits>"``, e.g. ``pat_3f2a...``.
        """
        prefix = _PREFIXES.get(kind)
        if prefix is None:
            raise ValueError(f"unknown id kind {kind!r}; expected one of {sorted(_PREFIXES)}")
        raw = str(raw).strip()
        if not raw:
            raise ValueError(f"cannot pseudonymise an empty {kind} id")
        digest = hmac.new(self.salt.encode(), f"{kind}:{raw}".encode(), hashlib.sha256)
        return f"{prefix}_{digest.hexdigest()[:20]}"

    @property
    def fingerprint(self) -> str:
        """A short public fingerprint of the salt (for lineage: which salt made these ids)."""
        return hashlib.sha256(b"chexmix-salt-fingerprint:" + self.salt.encode()).hexdigest()[:12]


def resolve_salt(explicit: str | None, storage_root: Path) -> str:
    """The id salt: ``explicit`` if given, else a per-storage-root secret created once.

    A generated salt is kept in ``<storage_root>/private/id_salt`` (mode 0600) so that
    pseudonyms stay stable across runs of the same deployment. Production deployments should set
    ``CHEXMIX_ID_SALT`` (via ``dg.EnvVar``) and keep it in their secret store.
    """
    if explicit:
        return explicit
    path = Path(storage_root) / "private" / "id_salt"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # atomic create-if-absent: a concurrent creator wins, we read theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()
