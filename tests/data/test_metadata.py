"""Item metadata readers: the three Amazon layouts and tables, on small files written here."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lit_mmrec.data.interactions import DataFormatError
from lit_mmrec.data.metadata import compose_text, image_reference, read_metadata


def test_amazon_2014_lines_are_python_literals_and_take_the_first_category_list(tmp_path: Path):
    path = tmp_path / "meta_Baby.json.gz"
    lines = [
        "{'asin': 'B1', 'title': 'Soft\\nStroller', 'brand': 'Acme', 'categories': [['Baby', 'Strollers'], "
        "['Gear']], 'description': 'Folds   flat.', 'imUrl': 'http://x/images/I/51a.jpg'}",
        "{'asin': 'B2', 'description': ''}",
        "{'asin': 'B1', 'title': 'a later copy'}",
    ]
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    metadata = read_metadata(path)
    assert metadata.texts == {"B1": "Soft Stroller Acme Baby Strollers Folds flat.", "B2": None}
    assert metadata.images == {"B1": "http://x/images/I/51a.jpg", "B2": None}
    assert (metadata.records, metadata.repeated) == (3, 1)


def test_amazon_2018_and_2023_layouts(tmp_path: Path):
    path = tmp_path / "meta.jsonl"
    records = [
        {"asin": "A", "title": "Cup", "brand": "", "category": ["Home", "Kitchen"], "description": ["Blue.", "Big."],
         "imageURL": ["http://s/I/small.jpg"], "imageURLHighRes": ["http://s/I/large.jpg"]},
        {"parent_asin": "P", "asin": "child", "title": "Lamp", "store": "Lumo", "categories": ["Lighting"],
         "description": [], "images": [{"thumb": "t.jpg", "large": "http://m/I/l.jpg", "hi_res": None}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    metadata = read_metadata(path)
    # brand empty: its alias "store" is absent, so the field is skipped; 2023's parent_asin is the id
    assert metadata.texts == {"A": "Cup Home Kitchen Blue. Big.", "P": "Lamp Lumo Lighting"}
    assert metadata.images == {"A": "http://s/I/large.jpg", "P": "http://m/I/l.jpg"}


def test_tables_with_named_columns_and_list_cells(tmp_path: Path):
    path = tmp_path / "items.tsv"
    path.write_text("sku\tname\ttags\tpicture\n"
                    "s1\tRed shoe\t['Shoes', 'Red']\timgs/s1.png\n"
                    "s2\t[Pack of 2] socks\t\t\n")
    metadata = read_metadata(path, ("name", "tags"), item_column="sku", image_column="picture")
    assert metadata.texts == {"s1": "Red shoe Shoes Red", "s2": "[Pack of 2] socks"}
    assert metadata.images == {"s1": "imgs/s1.png", "s2": None}


def test_bad_metadata_names_the_file_line_and_fix(tmp_path: Path):
    path = tmp_path / "meta.jsonl"
    path.write_text('{"title": "no id"}\n')
    with pytest.raises(DataFormatError, match=r"meta.jsonl, record at line 1: no parent_asin or asin or item_id.*"
                                              r"--item-column"):
        read_metadata(path)
    path.write_text('{"asin": "A"}\nnot json\n')
    with pytest.raises(DataFormatError, match="line 2: not a JSON object"):
        read_metadata(path)
    (tmp_path / "meta.xml").write_text("<items/>")
    with pytest.raises(DataFormatError, match="unknown metadata format"):
        read_metadata(tmp_path / "meta.xml")
    with pytest.raises(DataFormatError, match="no such metadata file"):
        read_metadata(tmp_path / "absent.json")


def test_compose_and_reference_helpers():
    assert compose_text({"title": float("nan"), "brand": "B"}, ("title", "brand")) == "B"
    assert compose_text({}, ("title",)) is None
    assert image_reference({"images": []}, None) is None
    assert image_reference({"pic": "a.jpg", "imUrl": "b.jpg"}, "pic") == "a.jpg"
