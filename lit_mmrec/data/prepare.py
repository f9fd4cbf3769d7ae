"""``lit_mmrec prepare``: raw interaction files to MMRec's atomic format (``<name>.inter`` and the id maps).

Inputs: Amazon review dumps as JSON lines, gzipped or not (2014/2018: ``reviewerID``, ``asin``,
``unixReviewTime`` in seconds; 2023: ``user_id``, ``parent_asin``, ``timestamp`` in milliseconds, the
``parent_asin`` being the id the 2023 metadata files use), or a CSV/TSV file with user, item and time
columns (named by ``--user``, ``--item``, ``--time``; ``--columns`` names them for a file without a header,
such as the 2014 ``ratings_*.csv``).

Steps:
1. repeated (user, item) pairs keep their earliest interaction (MMRec's notebooks drop only exact duplicates,
   which leaves a pair that can be both a training and a test interaction);
2. k-core filtering (``--k``, default 5, MMRec's): users and items with fewer than k interactions are removed,
   repeatedly, until none is left;
3. contiguous ids from 0 in order of first appearance in the file (MMRec's);
4. the split, per user:
   * ``mmrec`` (default): MMRec's ``1splitting`` notebook, which shuffles each user's interactions (seeded by
     ``--seed``; not by time) and holds out one valid and one test interaction for users with fewer than 10,
     else ``int(0.2 n)`` split in half between valid and test (the test part taking the odd one);
   * ``time``: each user's interactions in time order, the last ``--ratios`` shares to valid and test (at
     least one each while the user keeps one training interaction), default 8:1:1.

Writes ``<output>/<name>.inter`` (tab-separated ``userID itemID timestamp x_label``, 0/1/2 = train/valid/test),
``u_id_mapping.csv`` and ``i_id_mapping.csv`` (tab-separated raw id -> id, as MMRec's), and prints the
statistics.
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lit_mmrec.data.interactions import DataFormatError

AMAZON_FIELDS = {"user": ("reviewerID", "user_id"), "item": ("parent_asin", "asin"),
                 "time": ("unixReviewTime", "timestamp")}


def open_text(path: Path, newline: str | None = None):
    """A text handle on ``path``, gunzipped when it ends in ``.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline=newline)
    return path.open(encoding="utf-8", newline=newline)


def json_lines(path: Path, each: str):
    """(line number, object) of a file of one JSON object per line (``each`` says what a line holds, for the
    error message); Python-literal lines, as in the Amazon 2014 dumps, are accepted; blank lines skipped."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                try:
                    record = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    record = None
            if not isinstance(record, dict):
                raise DataFormatError(f"{path}, line {number}: not a JSON object; each line must be {each}")
            yield number, record


def read_amazon_json(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Users, items and times (seconds) of an Amazon review dump, one JSON object per line."""
    users, items, times = [], [], []
    for number, record in json_lines(path, "one review"):
        found = {}
        for role, names in AMAZON_FIELDS.items():
            name = next((n for n in names if n in record), None)
            if name is None:
                raise DataFormatError(f"{path}, line {number}: no {' or '.join(names)} field; an Amazon "
                                      f"review line needs a user, an item and a time")
            found[role] = record[name]
        users.append(str(found["user"]))
        items.append(str(found["item"]))
        seconds = float(found["time"])
        times.append(seconds / 1000.0 if "timestamp" in record and "unixReviewTime" not in record else seconds)
    return users, items, np.asarray(times, dtype=np.float64)


RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def bare_column_names(header: list[str]) -> list[str]:
    """Column names with RecBole's atomic-file types dropped (``user_id:token`` -> ``user_id``)."""
    return [name.rsplit(":", 1)[0] if name.rsplit(":", 1)[-1] in RECBOLE_TYPES else name for name in header]


def read_table(path: Path, user: str, item: str, time: str, columns: list[str] | None
               ) -> tuple[list[str], list[str], np.ndarray]:
    """Users, items and times of a CSV (``.csv``) or TSV (other suffixes, RecBole's ``.inter`` among them) file,
    with a header or ``columns``; a header's RecBole types (``user_id:token``) may be left out of the names."""
    delimiter = "," if ".csv" in path.suffixes else "\t"
    with open_text(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = columns or bare_column_names(next(reader, []))
        missing = [name for name in (user, item, time) if name not in header]
        if missing:
            raise DataFormatError(f"{path}: no column {missing[0]!r} in {header}; name the columns with --user, "
                                  f"--item and --time (or --columns for a file without a header)")
        at = [header.index(name) for name in (user, item, time)]
        rows = [row for row in reader if row]
    first = 1 if columns else 2
    users = [row[at[0]] for row in rows]
    items = [row[at[1]] for row in rows]
    try:
        times = np.asarray([row[at[2]] for row in rows], dtype=np.float64)
    except ValueError:
        bad = next(n for n, row in enumerate(rows) if not _is_number(row[at[2]]))
        raise DataFormatError(f"{path}, line {bad + first}: time {rows[bad][at[2]]!r} is not a number; give "
                              f"Unix times") from None
    return users, items, times


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Mask of the interactions that survive iterated k-core filtering, and the number of rounds."""
    keep = np.ones(len(users), dtype=bool)
    rounds = 0
    while True:
        user_count = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
        item_count = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
        drop = keep & ((user_count[users] < k) | (item_count[items] < k))
        if not drop.any():
            return keep, rounds
        keep &= ~drop
        rounds += 1


def _first_appearance_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids 0.. in order of first appearance, and the raw value of each id."""
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[inverse], unique[order]


def split_labels(users: np.ndarray, order_key: np.ndarray, how: str, ratios: Sequence[float]) -> np.ndarray:
    """x_label (0 train, 1 valid, 2 test) of each interaction; ``order_key`` orders each user's interactions
    (times for ``time``, random keys for ``mmrec``), the last ones being held out."""
    order = np.lexsort((np.arange(len(users)), order_key, users))  # by user, then key, then file order
    sorted_users = users[order]
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n = counts[sorted_users]
    rank = np.arange(len(users)) - starts[sorted_users]  # 0.. within the user
    if how == "mmrec":
        held = np.where(n < 10, 2, (0.2 * n).astype(np.int64))
        n_valid = np.where(n < 10, 1, held // 2)
        n_test = held - n_valid
    elif how == "time":
        total = float(sum(ratios))
        n_valid = np.maximum(1, np.floor(n * ratios[1] / total)).astype(np.int64)
        n_test = np.maximum(1, np.floor(n * ratios[2] / total)).astype(np.int64)
        too_few = n - n_valid - n_test < 1  # a user keeps one training interaction
        n_valid, n_test = np.where(too_few, 0, n_valid), np.where(too_few, np.minimum(1, n - 1), n_test)
    else:
        raise ValueError(f"split must be 'mmrec' or 'time', got {how!r}")
    labels_sorted = np.where(rank >= n - n_test, 2, np.where(rank >= n - n_test - n_valid, 1, 0))
    labels = np.empty(len(users), dtype=np.int64)
    labels[order] = labels_sorted
    return labels


def prepare(raw_users: Sequence[str], raw_items: Sequence[str], times: np.ndarray, output: Path, name: str,
            k: int = 5, split: str = "mmrec", ratios: Sequence[float] = (8, 1, 1), seed: int = 0) -> dict:
    """Writes the dataset and returns its statistics."""
    user_codes, user_names = _first_appearance_ids(np.asarray(raw_users, dtype=object).astype(str))
    item_codes, item_names = _first_appearance_ids(np.asarray(raw_items, dtype=object).astype(str))
    stats = {"raw interactions": len(user_codes)}
    # 1. one interaction per (user, item): the earliest
    order = np.lexsort((np.arange(len(times)), times, item_codes, user_codes))
    pair = user_codes[order] * (item_codes.max(initial=0) + 1) + item_codes[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    kept = np.sort(order[first])
    stats["repeated pairs dropped"] = len(order) - len(kept)
    user_codes, item_codes, times = user_codes[kept], item_codes[kept], times[kept]
    # 2. k-core
    keep, stats["k-core rounds"] = k_core(user_codes, item_codes, k)
    user_codes, item_codes, times = user_codes[keep], item_codes[keep], times[keep]
    if len(user_codes) == 0:
        raise DataFormatError(f"no interaction survives {k}-core filtering; lower --k")
    # 3. contiguous ids in order of first appearance
    users, user_index = _first_appearance_ids(user_codes)
    items, item_index = _first_appearance_ids(item_codes)
    # 4. the split
    key = times if split == "time" else np.random.default_rng(seed).random(len(users))
    labels = split_labels(users, key, split, ratios)
    output.mkdir(parents=True, exist_ok=True)
    with (output / f"{name}.inter").open("w", encoding="utf-8") as handle:
        handle.write("userID\titemID\ttimestamp\tx_label\n")
        np.savetxt(handle, np.column_stack([users, items, times.astype(np.int64), labels]), fmt="%d",
                   delimiter="\t")
    for filename, (column, index, names) in {"u_id_mapping.csv": ("user_id\tuserID", user_index, user_names),
                                             "i_id_mapping.csv": ("asin\titemID", item_index, item_names)}.items():
        with (output / filename).open("w", encoding="utf-8") as handle:
            handle.write(column + "\n")
            handle.writelines(f"{raw}\t{i}\n" for i, raw in enumerate(names[index]))
    n_users, n_items = len(user_index), len(item_index)
    stats.update({"users": n_users, "items": n_items, "interactions": len(users),
                  "sparsity": 1.0 - len(users) / (n_users * n_items),
                  **{f"{part} interactions": int((labels == code).sum())
                     for code, part in enumerate(("train", "valid", "test"))}})
    return stats


def main(argv: Sequence[str] | None = None) -> None:
    """``lit_mmrec prepare RAW --name NAME --output DIR [--k 5] [--split mmrec|time] ...``."""
    parser = argparse.ArgumentParser(prog="lit_mmrec prepare", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("raw", type=Path, help="an Amazon review dump (.json / .jsonl, optionally .gz) or a CSV/TSV file")
    add("--name", required=True, help="dataset name: writes <output>/<name>.inter")
    add("--output", type=Path, required=True, help="dataset folder (the data config's root)")
    add("--k", type=int, default=5, help="k-core: minimum interactions per user and per item (MMRec: 5)")
    add("--split", choices=("mmrec", "time"), default="mmrec", help="per-user split (module docstring)")
    add("--ratios", default="8:1:1", help="train:valid:test shares of the time split")
    add("--seed", type=int, default=0, help="seed of the mmrec split's shuffle")
    add("--user", default="user_id", help="user column of a CSV/TSV file")
    add("--item", default="item_id", help="item column of a CSV/TSV file")
    add("--time", default="timestamp", help="time column (Unix seconds) of a CSV/TSV file")
    add("--columns", default=None, help="comma-separated column names of a CSV/TSV file without a header")
    options = parser.parse_args(argv)
    try:
        ratios = [float(r) for r in options.ratios.split(":")]
        if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0:
            raise DataFormatError(f"--ratios {options.ratios}: give three shares train:valid:test, e.g. 8:1:1")
        if options.k < 1:
            raise DataFormatError(f"--k {options.k}: the k-core needs k >= 1")
        if not options.raw.is_file():
            raise DataFormatError(f"{options.raw}: no such file")
        if any(s in (".json", ".jsonl") for s in options.raw.suffixes):
            users, items, times = read_amazon_json(options.raw)
        else:
            users, items, times = read_table(options.raw, options.user, options.item, options.time,
                                             options.columns.split(",") if options.columns else None)
        if not users:
            raise DataFormatError(f"{options.raw}: no interactions")
        stats = prepare(users, items, times, options.output, options.name, options.k, options.split, ratios,
                        options.seed)
    except DataFormatError as error:
        sys.exit(f"lit_mmrec prepare: {error}")
    width = max(map(len, stats))
    for key, value in stats.items():
        print(f"{key:<{width}}  {value:.6f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"written: {options.output / (options.name + '.inter')}, u_id_mapping.csv, i_id_mapping.csv")
