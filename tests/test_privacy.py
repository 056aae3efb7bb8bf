import os
import stat

import pytest

from cxr.privacy import Pseudonymizer, resolve_salt


def test_hash_is_keyed_stable_and_namespaced():
    a = Pseudonymizer("a" * 16)
    b = Pseudonymizer("b" * 16)
    assert a.hash_id("patient", "MRN123") == a.hash_id("patient", " MRN123 ")
    assert a.hash_id("patient", "MRN123") != b.hash_id("patient", "MRN123")
    assert a.hash_id("patient", "MRN123") != a.hash_id("study", "MRN123")
    pseudonym = a.hash_id("patient", "MRN123")
    assert pseudonym.startswith("pat_") and len(pseudonym) == 24
    assert "MRN123" not in pseudonym and "a" * 16 not in repr(a)


def test_rejects_short_salt_and_empty_ids():
    with pytest.raises(ValueError, match="at least 16"):
        Pseudonymizer("short")
    with pytest.raises(ValueError, match="empty"):
        Pseudonymizer("x" * 16).hash_id("patient", "  ")
    with pytest.raises(ValueError, match="unknown id kind"):
        Pseudonymizer("x" * 16).hash_id("person", "1")


def test_generated_salt_is_persisted_private_and_reused(tmp_path):
    first = resolve_salt(None, tmp_path)
    second = resolve_salt(None, tmp_path)
    assert first == second and len(first) == 64
    mode = stat.S_IMODE(os.stat(tmp_path / "private" / "id_salt").st_mode)
    assert mode == 0o600
    assert resolve_salt("explicit-salt-value-123", tmp_path) == "explicit-salt-value-123"
