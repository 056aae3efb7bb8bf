import pytest

from cxr.sources import SourceSpec, classify, list_source


@pytest.mark.parametrize(
    ("rel_path", "kind", "ids"),
    [
        (
            "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.dcm",
            "dicom",
            {
                "raw_patient": "10000032",
                "raw_study": "50414267",
                "raw_image": "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
            },
        ),
        (
            "files/p10/p10000032/s50414267.txt",
            "report",
            {"raw_patient": "10000032", "raw_study": "50414267"},
        ),
        (
            "files/p10/p10000032/s50414267/abc.jpg",
            "raster",
            {"raw_patient": "10000032", "raw_study": "50414267", "raw_image": "abc"},
        ),
        ("index.html", "other", {}),
        ("files/p10/p10000032/notes.pdf", "other", {}),
    ],
)
def test_mimic_layout_classification(tmp_path, rel_path, kind, ids):
    assert classify(rel_path, SourceSpec(root=tmp_path, layout="mimic-cxr")) == (kind, ids)


def test_dicom_tree_and_images_csv_classification(tmp_path):
    tree = SourceSpec(root=tmp_path, layout="dicom-tree")
    assert classify("export/IM0001", tree)[0] == "dicom"
    assert classify("export/1.2.3.4.txt", tree) == ("report", {"raw_study": "1.2.3.4"})
    assert classify("export/readme.md", tree)[0] == "other"
    csv = SourceSpec(root=tmp_path, layout="images-csv")
    assert classify("metadata.csv", csv)[0] == "report_table"
    assert classify("images/a.jpeg", csv)[0] == "raster"
    assert classify("other/a.jpeg", csv)[0] == "other"


def test_unknown_layout_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown source layout 'pacs'"):
        SourceSpec(root=tmp_path, layout="pacs")


def test_listing_is_sorted_and_skips_hidden(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.dcm").write_bytes(b"x")
    (tmp_path / "a.dcm").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.dcm").write_bytes(b"x")
    listed = [f.rel_path for f in list_source(SourceSpec(root=tmp_path, layout="dicom-tree"))]
    assert listed == ["a.dcm", "b/z.dcm"]


def test_mimic_layout_scans_only_the_files_tree(tmp_path):
    study = tmp_path / "files" / "p10" / "p10000001" / "s50000001"
    study.mkdir(parents=True)
    (study / "a.dcm").write_bytes(b"x")
    (tmp_path / "files" / "p10" / "p10000001" / "s50000001.txt").write_text("FINDINGS: ok")
    (tmp_path / "LICENSE.txt").write_text("licence")
    listed = [(f.rel_path, f.kind) for f in list_source(SourceSpec(root=tmp_path))]
    assert listed == [
        ("files/p10/p10000001/s50000001.txt", "report"),
        ("files/p10/p10000001/s50000001/a.dcm", "dicom"),
    ]
