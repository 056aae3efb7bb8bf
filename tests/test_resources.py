"""Shipped third-party rule files stay byte-identical to their public sources."""

import filecmp

from cxr.labeler import DEFAULT_RULES_DIR
from cxr.reports import DEFAULT_TITLES_PATH


def test_vendored_rule_files_are_unedited_copies(shared_data):
    compare = filecmp.dircmp(DEFAULT_RULES_DIR, shared_data / "chexpert_labeler_rules")
    pending = [compare]
    while pending:
        current = pending.pop()
        assert not current.left_only and not current.right_only and not current.diff_files, (
            current.left,
            current.left_only,
            current.right_only,
            current.diff_files,
        )
        pending.extend(current.subdirs.values())
    assert filecmp.cmp(
        DEFAULT_TITLES_PATH, shared_data / "negbio" / "section_titles.txt", shallow=False
    )
    assert (DEFAULT_RULES_DIR / "LICENSE").exists()
    assert (DEFAULT_TITLES_PATH.parent / "LICENSE.txt").exists()
