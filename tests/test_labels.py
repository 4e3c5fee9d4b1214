"""The NIH label readers, against the real files in tests/fixtures/nih and hand-made malformed ones."""

from __future__ import annotations

import gzip

import pyarrow.compute as pc
import pytest

from cxr.data.csv_text import SourceFormatError
from cxr.data.labels import read_box_list, read_label_table, read_split_list
from cxr.data.quarantine import Reason
from cxr.findings import FINDING_COLUMNS, FINDINGS
from tests.conftest import NIH

HEADER_V2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
GOOD_ROW = "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143"

# From shared/data/nih/README.md (the full v2020 table).
NIH_COUNTS = {
    "Infiltration": 19_894,
    "Effusion": 13_317,
    "Atelectasis": 11_559,
    "Nodule": 6_331,
    "Mass": 5_782,
    "Pneumothorax": 5_302,
    "Consolidation": 4_667,
    "Pleural_Thickening": 3_385,
    "Cardiomegaly": 2_776,
    "Emphysema": 2_516,
    "Edema": 2_303,
    "Fibrosis": 1_686,
    "Pneumonia": 1_431,
    "Hernia": 227,
}


def table(*rows: str, header: str = HEADER_V2020) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


@pytest.fixture(scope="module")
def v2020():
    return read_label_table((NIH / "Data_Entry_2017_v2020.csv.gz").read_bytes(), "Data_Entry_2017_v2020.csv.gz")


def test_full_v2020_table_matches_the_published_counts(v2020):
    rows = v2020.rows
    assert v2020.edition == "v2020"
    assert (v2020.n_input_rows, rows.num_rows, v2020.quarantine) == (112_120, 112_120, [])
    assert len(pc.unique(rows["patient_id"])) == 30_805
    counts = {f: pc.sum(rows[c]).as_py() for f, c in zip(FINDINGS, FINDING_COLUMNS, strict=True)}
    assert counts == NIH_COUNTS
    assert pc.sum(pc.equal(pc.list_value_length(rows["finding_labels"]), 0)).as_py() == 60_361
    views = dict(zip(*[c.to_pylist() for c in pc.value_counts(rows["view"]).flatten()], strict=True))
    assert views == {"PA": 67_310, "AP": 44_810}


def test_both_editions_give_identical_rows_for_the_sample(v2020):
    original = read_label_table((NIH / "Data_Entry_2017_sample_original_format.csv").read_bytes(), "orig.csv")
    assert original.edition == "2017"
    assert original.rows.num_rows == 28 and original.quarantine == []
    same = v2020.rows.filter(pc.is_in(v2020.rows["image_id"], original.rows["image_id"]))
    assert same.sort_by("image_id").equals(original.rows.sort_by("image_id"))


def test_box_list_reads_984_boxes_on_880_images_with_infiltrate_mapped():
    boxes = read_box_list((NIH / "BBox_List_2017.csv.gz").read_bytes(), "BBox_List_2017.csv.gz")
    assert (boxes.n_input_rows, boxes.rows.num_rows, boxes.quarantine) == (984, 984, [])
    assert len(pc.unique(boxes.rows["image_id"])) == 880
    findings = set(boxes.rows["finding"].to_pylist())
    assert "Infiltrate" not in findings and "Infiltration" in findings and len(findings) == 8
    raw = gzip.decompress((NIH / "BBox_List_2017.csv.gz").read_bytes()).decode()
    assert raw.count(",Infiltrate,") == pc.sum(pc.equal(boxes.rows["finding"], "Infiltration")).as_py() == 123


def test_finding_labels_are_sorted_and_no_finding_is_empty():
    rows = read_label_table(
        table(
            "a_000.png,Nodule|Atelectasis,0,1,50,F,AP,10,10,0.1,0.1", "b_000.png,No Finding,0,2,50,F,AP,10,10,0.1,0.1"
        ),
        "t",
    ).rows
    assert rows["finding_labels"].to_pylist() == [["Atelectasis", "Nodule"], []]
    assert rows["atelectasis"].to_pylist() == [True, False] and rows["nodule"].to_pylist() == [True, False]


@pytest.mark.parametrize(
    "labels", ["cardiomegaly", " Cardiomegaly", "Cardiomegaly ", "Heart Failure", "Mass|nodule", "Infiltrate"]
)
def test_labels_are_matched_exactly(labels):
    result = read_label_table(table(GOOD_ROW, f"00000002_000.png,{labels},0,2,40,F,AP,10,10,0.1,0.1"), "t.csv")
    assert result.rows.num_rows == 1
    [record] = result.quarantine
    assert (record.reason, record.image_id, record.source_uri) == (
        Reason.UNKNOWN_LABEL,
        "00000002_000.png",
        "t.csv#line=3",
    )


@pytest.mark.parametrize(
    ("row", "reason", "detail"),
    [
        ("00000002_000.png,Mass,0,2,abc,F,PA,10,10,0.1,0.1", Reason.BAD_ROW, "Patient Age 'abc' is not an integer"),
        ("00000002_000.png,Mass,0,2,414,F,PA,10,10,0.1,0.1", Reason.BAD_ROW, "Patient Age 414 is outside"),
        ("00000002_000.png,Mass,0,2,40,X,PA,10,10,0.1,0.1", Reason.BAD_ROW, "Patient Gender 'X'"),
        ("00000002_000.png,Mass,0,2,40,F,LL,10,10,0.1,0.1", Reason.BAD_ROW, "View Position 'LL'"),
        ("00000002_000.png,Mass,0,2,40,F,PA,10,10,0.1,0.1,extra", Reason.BAD_ROW, "expected 11 fields, got 12"),
        ("00000002_000.png,Mass,0,2,40,F,PA,10,10", Reason.BAD_ROW, "expected 11 fields, got 9"),
        ("00000002_000.png,Mass,0,2,40,F,PA,10,10,-0.1,0.1", Reason.BAD_ROW, "must be a positive number"),
        ("00000002_000.png,,0,2,40,F,PA,10,10,0.1,0.1", Reason.BAD_ROW, "Finding Labels is empty"),
        ("00000002_000.png,No Finding|Mass,0,2,40,F,PA,10,10,0.1,0.1", Reason.BAD_ROW, "together with findings"),
        ("00000002_000.png,Mass|Mass,0,2,40,F,PA,10,10,0.1,0.1", Reason.BAD_ROW, "repeated label"),
        ("../etc/passwd.png,Mass,0,2,40,F,PA,10,10,0.1,0.1", Reason.UNSAFE_PATH, "would leave the image folder"),
        ("images/x.png,Mass,0,2,40,F,PA,10,10,0.1,0.1", Reason.UNSAFE_PATH, "would leave the image folder"),
        ("00000002_000.jpg,Mass,0,2,40,F,PA,10,10,0.1,0.1", Reason.BAD_ROW, "is not a .png file name"),
        ("00000001_000.png,Mass,0,2,40,F,PA,10,10,0.1,0.1", Reason.DUPLICATE_IMAGE_ID, "already on line 2"),
        # rows the csv module itself rejects: they used to stop the whole ingest with csv.Error
        ("00000002_000.png,Ma\rss,0,2,40,F,PA,10,10,0.1,0.1", Reason.MALFORMED_ROW, "carriage return (CR)"),
        ("00000002_000.png," + "M" * 200_000 + ",0,2,40,F,PA,10,10,0.1,0.1", Reason.FIELD_TOO_LARGE, "131072"),
    ],
)
def test_a_bad_row_is_quarantined_with_its_reason_and_the_rest_is_kept(row, reason, detail, reliability_record):
    result = read_label_table(table(GOOD_ROW, row, "00000003_000.png,No Finding,0,3,30,M,AP,10,10,0.1,0.1"), "t.csv")
    assert result.rows["image_id"].to_pylist() == ["00000001_000.png", "00000003_000.png"]
    [record] = result.quarantine
    assert record.reason == reason and detail in record.detail, record
    assert record.image_id == row.split(",")[0] and len(record.detail) < 200
    assert result.n_input_rows == result.rows.num_rows + len(result.quarantine) == 3
    reliability_record.record("ingest", f"a label row: {detail[:60]}", f"quarantined: {reason}; the other rows kept")


def test_a_row_that_is_not_utf8_is_quarantined():
    data = table(GOOD_ROW) + "00000002_000.png,Mass,0,2,40,F,PA,10,10,0.1,0.1 caf\u00e9\n".encode("latin-1")
    result = read_label_table(data, "t.csv")
    assert result.rows.num_rows == 1
    [record] = result.quarantine
    assert record.reason == Reason.BAD_ROW and "not UTF-8" in record.detail and record.source_uri == "t.csv#line=3"


def test_original_edition_rows_with_trailing_commas_parse():
    header = HEADER_V2020 + ","
    result = read_label_table(table(GOOD_ROW + ",", GOOD_ROW.replace("_000", "_001") + ",x", header=header), "t")
    assert result.edition == "2017"
    assert result.rows.num_rows == 1
    assert result.quarantine[0].reason == Reason.BAD_ROW  # a non-empty 12th field


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"\n\n", "the file is empty"),
        (HEADER_V2020.encode("utf-16"), "UTF-16"),
        (b"\xff\xfe\x00bad", "UTF-16"),
        (b"Image Index,Finding Labels\xe9\n", "header is not UTF-8"),
        (table(GOOD_ROW, header=HEADER_V2020.replace("Patient Age,", "")), "missing column(s) 'Patient Age'"),
        (table(header=HEADER_V2020.replace("OriginalImage[Width,Height]", "Size")), "'OriginalImage[Width,Height]'"),
        (table(GOOD_ROW, header=HEADER_V2020.replace("Patient ID", "Patient\rID")), "header does not parse"),
    ],
)
def test_an_unreadable_table_raises_a_specific_error(data, message):
    with pytest.raises(SourceFormatError, match=r"t\.csv") as err:
        read_label_table(data, "t.csv")
    assert message in str(err.value)


def test_columns_are_found_by_name_not_position():
    header = (
        "Patient ID,Image Index,Finding Labels,Follow-up #,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    result = read_label_table(table("7,00000007_000.png,Hernia,0,33,M,PA,20,30,0.2,0.3", header=header), "t")
    row = result.rows.to_pylist()[0]
    assert (row["patient_id"], row["image_id"], row["hernia"], row["orig_height"], row["pixel_spacing_y"]) == (
        7,
        "00000007_000.png",
        True,
        30,
        0.3,
    )


def test_box_list_quarantines_bad_rows():
    data = (
        b"Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        b"a.png,Infiltrate,1,2,3,4\n"
        b"b.png,Fracture,1,2,3,4\n"
        b"c.png,Mass,1,2,0,4\n"
        b"d.png,Mass,1,2,3\n"
        b"../e.png,Mass,1,2,3,4\n"
    )
    boxes = read_box_list(data, "bbox.csv")
    assert boxes.rows.to_pylist() == [
        {"image_id": "a.png", "finding": "Infiltration", "x": 1.0, "y": 2.0, "w": 3.0, "h": 4.0}
    ]
    assert [q.reason for q in boxes.quarantine] == [
        Reason.UNKNOWN_LABEL,
        Reason.BAD_ROW,
        Reason.BAD_ROW,
        Reason.UNSAFE_PATH,
    ]
    assert boxes.n_input_rows == 5


def test_box_list_with_a_wrong_header_raises():
    with pytest.raises(SourceFormatError, match="expected a header"):
        read_box_list(b"Image,Label,x,y,w,h\n", "bbox.csv")


def test_split_list_reads_names_and_quarantines_bad_ones():
    result = read_split_list(b"a_000.png\r\nb_000.png\n\na_000.png\n../c.png\n", "test_list.txt")
    assert result.image_ids == ["a_000.png", "b_000.png"]
    assert [q.reason for q in result.quarantine] == [Reason.DUPLICATE_IMAGE_ID, Reason.UNSAFE_PATH]
    assert result.n_input_rows == 4
