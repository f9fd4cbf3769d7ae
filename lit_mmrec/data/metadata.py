"""Item metadata for ``lit_mmrec features``: one text and one image reference per raw item id.

Formats (gzipped or not):

* Amazon metadata, one object per line: 2014 (Python-literal lines: ``asin``, ``title``, ``brand``,
  ``categories`` as a list of lists, ``description``, ``imUrl``), 2018 (JSON: ``asin``, ``title``, ``brand``,
  ``category`` and ``description`` as lists, ``imageURLHighRes`` / ``imageURL``), 2023 (JSON: ``parent_asin``,
  ``title``, ``store``, ``categories``, ``description`` and ``features`` as lists, ``images`` as a list of
  ``{hi_res, large, thumb}``);
* any JSON-lines file, or a CSV/TSV table with a header row (RecBole's ``.item`` files among them, whose
  ``name:type`` columns are addressed by name), with an item id column (``item_column``) and text and image
  columns named by the caller.

The text of an item is its ``text_fields`` in order, joined by single spaces, newlines and runs of whitespace
made one space. The default fields are MMRec's (its ``3feat-encoder`` notebook): title, brand, the categories,
description. Aliases fill a field a layout names otherwise: ``brand`` <- ``store`` (2023), ``categories`` <-
``category`` (2018). A list is joined; a list of lists (the 2014 ``categories``) gives its first list, as
MMRec's notebook takes ``categories[0]``; a table cell holding a list literal (MMRec's meta CSVs) is read as the
list. An item whose fields are all absent or empty has no text.

The image reference is, in this order: ``image_column`` when given; ``imageURLHighRes``, ``imageURL``,
``imUrl``, or ``images`` (``hi_res``, then ``large``, of the first image). :mod:`lit_mmrec.data.features`
turns a reference into a local file: never a download.
"""

from __future__ import annotations

import ast
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from lit_mmrec.data.interactions import DataFormatError
from lit_mmrec.data.prepare import bare_column_names, json_lines, open_text

MMREC_TEXT_FIELDS = ("title", "brand", "categories", "description")
FIELD_ALIASES = {"brand": ("store",), "categories": ("category",)}
ID_FIELDS = ("parent_asin", "asin", "item_id")  # tried in order when no item column is named
AMAZON_IMAGE_FIELDS = ("imageURLHighRes", "imageURL", "imUrl", "images")
_SPACES = re.compile(r"\s+")


@dataclass
class ItemMetadata:
    """What a metadata file says of each raw item id: its text (``None`` when it has none) and image reference."""

    texts: dict[str, str | None] = field(default_factory=dict)
    images: dict[str, str | None] = field(default_factory=dict)
    records: int = 0  # lines or rows read
    repeated: int = 0  # records of an id seen before (the first one is kept)


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) for v in value):
            value = value[0]  # 2014 categories: MMRec takes the first list
        return " ".join(_as_text(v) for v in value)
    if isinstance(value, float) and value != value:  # NaN from a table writer
        return ""
    text = str(value)
    if text.startswith("[") and text.endswith("]"):  # a list written into a table cell (MMRec's meta CSVs)
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(parsed, list):
            return _as_text(parsed)
    return text


def compose_text(record: dict, fields: tuple[str, ...]) -> str | None:
    """The fields of one record joined by spaces; ``None`` when every field is absent or empty."""
    parts = []
    for name in fields:
        value = record.get(name)
        for alias in FIELD_ALIASES.get(name, ()):
            if value in (None, "", []):
                value = record.get(alias)
        parts.append(_SPACES.sub(" ", _as_text(value)).strip())
    text = " ".join(p for p in parts if p)
    return text or None


def image_reference(record: dict, image_column: str | None) -> str | None:
    """The record's image path or URL, or ``None``."""
    names = (image_column,) if image_column else AMAZON_IMAGE_FIELDS
    for name in names:
        value = record.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, dict):  # 2023: {"thumb", "large", "hi_res", "variant"}
            value = value.get("hi_res") or value.get("large") or value.get("thumb")
        if value:
            return str(value)
    return None


def _records(path: Path):
    """(line number, record) of a JSON-lines file, Python-literal lines (Amazon 2014) accepted, or of a table."""
    names = [s.lower() for s in path.suffixes]
    if any(s in (".json", ".jsonl") for s in names):
        yield from json_lines(path, "the record of one item")
    elif any(s in (".csv", ".tsv", ".txt", ".item") for s in names):
        with open_text(path, newline="") as handle:
            reader = csv.reader(handle, delimiter="," if ".csv" in names else "\t")
            header = bare_column_names(next(reader, []))
            for number, row in enumerate(reader, start=2):
                if row:
                    yield number, dict(zip(header, row))
    else:
        raise DataFormatError(f"{path}: unknown metadata format; give JSON lines (.json, .jsonl) or a table with a "
                              f"header row (.csv, .tsv, .item), optionally gzipped")


def read_metadata(path: Path, text_fields: tuple[str, ...] = MMREC_TEXT_FIELDS, item_column: str | None = None,
                  image_column: str | None = None) -> ItemMetadata:
    """Reads ``path`` into an :class:`ItemMetadata`; the first record of a repeated id is kept."""
    if not path.is_file():
        raise DataFormatError(f"{path}: no such metadata file")
    metadata = ItemMetadata()
    for number, record in _records(path):
        metadata.records += 1
        names = (item_column,) if item_column else ID_FIELDS
        name = next((n for n in names if record.get(n) not in (None, "")), None)
        if name is None:
            raise DataFormatError(f"{path}, record at line {number}: no {' or '.join(names)} field; name the item "
                                  f"id column with --item-column")
        raw = str(record[name]).strip()
        if raw in metadata.texts:
            metadata.repeated += 1
            continue
        metadata.texts[raw] = compose_text(record, text_fields)
        metadata.images[raw] = image_reference(record, image_column)
    if metadata.records == 0:
        raise DataFormatError(f"{path}: no records")
    return metadata
