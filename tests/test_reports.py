"""Report section parsing: MIMIC-style free text, Open-i XML (real files) and headerless notes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxr.reports import (
    DEFAULT_TITLES_PATH,
    FINDINGS,
    IMPRESSION,
    canonical_section,
    iter_openi_dir,
    load_section_titles,
    normalize_text,
    parse_openi_xml,
    parse_report,
    training_text,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPENI = SHARED / "openi_iu_reports" / "ecgen-radiology-sample300"
NEGBIO = SHARED / "negbio" / "section_titles.txt"

MIMIC = """ WET READ: ___ ___ ___ 4:21 PM
 Possible small left pleural effusion.
 ______________________________________________________________________________
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___.

 FINDINGS:

 There is no focal consolidation or pneumothorax.  Small left pleural
 effusion.  The cardiomediastinal silhouette is normal.

 IMPRESSION:

 Small left pleural effusion.
"""


def test_mimic_report_sections_order_and_banner():
    parsed = parse_report(MIMIC)
    assert parsed.order == (
        "WET_READ",
        "EXAMINATION",
        "INDICATION",
        "TECHNIQUE",
        "COMPARISON",
        "FINDINGS",
        "IMPRESSION",
    )
    assert parsed.preamble == ""
    # wrapped lines are joined, whitespace collapsed
    assert parsed.findings == (
        "There is no focal consolidation or pneumothorax. Small left pleural effusion. "
        "The cardiomediastinal silhouette is normal."
    )
    assert parsed.impression == "Small left pleural effusion."
    assert parsed.sections["EXAMINATION"] == "CHEST (PA AND LAT)"
    assert all("FINAL REPORT" not in text for text in parsed.sections.values())
    assert parsed.has("findings") and parsed.get("Impression") == parsed.impression


def test_wet_read_block_drops_stamp_and_stops_at_rule():
    parsed = parse_report(MIMIC)
    assert parsed.sections["WET_READ"] == "Possible small left pleural effusion."


def test_deidentification_marks_are_kept_as_triple_underscores():
    parsed = parse_report(MIMIC)
    assert parsed.sections["INDICATION"] == "___F with cough // eval for pneumonia"
    assert parsed.sections["COMPARISON"] == "___."


@pytest.mark.parametrize(
    "header",
    ["FINDINGS:", "Findings:", "findings:", "FINDINGS :", "  FINDINGS:"],
)
def test_header_case_variants_on_own_line(header):
    parsed = parse_report(f"{header}\nLungs are clear.\nIMPRESSION:\nNormal.")
    assert parsed.findings == "Lungs are clear."
    assert parsed.impression == "Normal."


def test_header_followed_by_text_on_same_line_and_mid_line_header():
    parsed = parse_report("FINDINGS: Lungs are clear. IMPRESSION: No acute process.")
    assert parsed.order == ("FINDINGS", "IMPRESSION")
    assert parsed.findings == "Lungs are clear."
    assert parsed.impression == "No acute process."


def test_header_without_colon_alone_on_its_line():
    parsed = parse_report("IMPRESSION\nNo acute process.")
    assert parsed.impression == "No acute process."


def test_missing_headers_everything_in_preamble():
    text = "Heart size normal.\nLungs are clear."
    parsed = parse_report(text)
    assert parsed.order == ()
    assert not parsed.has_headers
    assert parsed.preamble == "Heart size normal. Lungs are clear."
    assert training_text(parsed) == ("", "no_usable_text")
    assert training_text(parsed, "full") == (parsed.preamble, "full")


def test_impression_only_report():
    parsed = parse_report("FINAL REPORT\nINDICATION: cough.\n\nIMPRESSION: No pneumonia.")
    assert FINDINGS not in parsed.sections
    assert training_text(parsed) == ("No pneumonia.", "impression")
    assert training_text(parsed, "findings") == ("", "no_usable_text")


def test_findings_only_report():
    parsed = parse_report("FINDINGS: Lungs are clear.")
    assert training_text(parsed) == ("Lungs are clear.", "findings")
    assert training_text(parsed, "impression") == ("", "no_usable_text")


def test_training_text_modes():
    parsed = parse_report("INDICATION: cough.\nFINDINGS: Clear lungs.\nIMPRESSION: Normal.")
    assert training_text(parsed) == ("Clear lungs. Normal.", "findings+impression")
    assert parsed.training_text("impression") == ("Normal.", "impression")
    assert training_text(parsed, "findings") == ("Clear lungs.", "findings")
    assert training_text(parsed, "full") == ("cough. Clear lungs. Normal.", "full")
    with pytest.raises(ValueError, match="unknown training text mode"):
        training_text(parsed, "everything")
    assert training_text(parse_report(""), "full") == ("", "no_usable_text")


@pytest.mark.parametrize(
    ("title", "canonical"),
    [
        ("CLINICAL HISTORY", "HISTORY"),
        ("History", "HISTORY"),
        ("REASON FOR EXAM", "INDICATION"),
        ("Reason for examination", "INDICATION"),
        ("INDICATIONS", "INDICATION"),
        ("CONCLUSION", "IMPRESSION"),
        ("IMPRESSIONS", "IMPRESSION"),
        ("FINDINGS AND IMPRESSION", "FINDINGS"),
        ("COMPARISONS", "COMPARISON"),
        ("IMPRESSON", "IMPRESSION"),  # NegBio-listed typos
        ("FINDNGS", "FINDINGS"),
        ("WET READ", "WET_READ"),
        ("Recommendations", "RECOMMENDATIONS"),  # unknown: normalised, kept
    ],
)
def test_synonym_headers_map_to_canonical(title, canonical):
    assert canonical_section(title) == canonical


def test_synonym_header_in_report_and_repeated_sections_concatenate():
    text = "CLINICAL HISTORY: fever.\nFINDINGS AND IMPRESSION: Clear.\nCONCLUSION: Normal.\n"
    text += "IMPRESSION: Still normal."
    parsed = parse_report(text)
    assert parsed.order == ("HISTORY", "FINDINGS", "IMPRESSION")
    assert parsed.sections["HISTORY"] == "fever."
    assert parsed.impression == "Normal. Still normal."
    assert parsed.titles["FINDINGS"] == "FINDINGS AND IMPRESSION"


def test_unknown_uppercase_section_kept_under_its_own_name():
    parsed = parse_report("FINDINGS: Clear.\nRECOMMENDATION(S): Follow-up CT.\nIMPRESSION: Ok.")
    assert parsed.order == ("FINDINGS", "RECOMMENDATION(S)", "IMPRESSION")
    assert parsed.sections["RECOMMENDATION(S)"] == "Follow-up CT."
    assert parsed.impression == "Ok."


def test_lowercase_label_in_prose_is_not_a_header():
    parsed = parse_report("FINDINGS: Tubes: none. Note: lungs clear.")
    assert parsed.order == ("FINDINGS",)
    assert parsed.findings == "Tubes: none. Note: lungs clear."


@pytest.mark.skipif(not NEGBIO.is_file(), reason="NegBio title list not present")
def test_negbio_title_list_adds_headers_and_parser_works_without_it():
    titles = load_section_titles(NEGBIO)
    assert len(titles) > 400
    assert {"FINDINGS", "IMPRESSION", "OSSEOUS STRUCTURES"} <= titles
    assert load_section_titles(DEFAULT_TITLES_PATH) == titles
    text = "FINDINGS: Clear lungs.\nOsseous Structures: Intact.\nIMPRESSION: Normal."
    with_list = parse_report(text, titles_path=NEGBIO)
    assert with_list.sections["OSSEOUS STRUCTURES"] == "Intact."
    assert with_list.findings == "Clear lungs."
    without = parse_report(text, titles_path=None)
    assert without.findings == "Clear lungs. Osseous Structures: Intact."
    assert without.impression == "Normal."
    assert load_section_titles(None) == frozenset()
    assert load_section_titles("/nonexistent/titles.txt") == frozenset()


def test_normalize_text_marks_whitespace_and_banners():
    assert normalize_text("  a \n\n b\t c ") == "a b c"
    assert (
        normalize_text("Normal chest x-XXXX. XXXX XXXX seen.")
        == "Normal chest x-___. ___ ___ seen."
    )
    assert normalize_text("Seen by Dr. ___ on ____ at [**2101-3-4**].") == (
        "Seen by Dr. ___ on ___ at ___."
    )
    assert normalize_text("FINAL REPORT\n___ ___\n" + "_" * 40 + "\nok") == "___ ___ ok"
    assert normalize_text("") == ""
    # ordinary words with X are untouched
    assert normalize_text("XR chest, Xray") == "XR chest, Xray"


# ------------------------------------------------------------------ Open-i XML (real files)
requires_openi = pytest.mark.skipif(not OPENI.is_dir(), reason="Open-i sample not present")


@requires_openi
def test_openi_xml_real_report_structure():
    report = parse_openi_xml(OPENI / "1.xml")
    assert report.report_id == "1"
    assert set(report.sections) == {"COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"}
    assert report.image_ids == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert report.mesh_major == ["normal"]
    assert all("XXXX" not in text for text in report.sections.values())
    assert "___" in report.impression
    text, source = report.training_text()
    assert source == "findings+impression"
    assert text == f"{report.findings} {report.impression}"
    assert parse_openi_xml((OPENI / "1.xml").read_bytes()) == report


@requires_openi
def test_openi_sample_counts_match_the_readme():
    reports = list(iter_openi_dir(OPENI))
    assert len(reports) == 300
    assert sum("normal" in r.mesh_major for r in reports) == 100
    assert sum(len(r.image_ids) for r in reports) == 581
    # chosen to have FINDINGS and IMPRESSION; XXXX de-identification is normalised everywhere
    assert all(r.findings and r.impression for r in reports)
    assert all("XXXX" not in t for r in reports for t in r.sections.values())
    assert sum("___" in " ".join(r.sections.values()) for r in reports) > 150
    assert all(code == code.strip() and code for r in reports for code in r.mesh_major)
    assert any(r.mesh_automatic for r in reports)
    assert len({r.report_id for r in reports}) == 300


# ------------------------------------------------------------------ headerless clinical notes
COVID = SHARED / "covid_chestxray" / "metadata.csv"


@pytest.mark.skipif(not COVID.is_file(), reason="COVID metadata not present")
def test_covid_clinical_notes_are_preamble_only():
    with COVID.open(newline="", encoding="utf-8") as handle:
        notes = {row["clinical_notes"] for row in csv.DictReader(handle) if row["clinical_notes"]}
    assert len(notes) > 200
    for note in notes:
        parsed = parse_report(note)
        assert FINDINGS not in parsed.sections and IMPRESSION not in parsed.sections
        assert training_text(parsed)[1] == "no_usable_text"
        assert training_text(parsed, "full")[0]
    assert sum(parse_report(n).order == () for n in notes) >= len(notes) - 2
