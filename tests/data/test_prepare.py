"""``lit_mmrec prepare``: k-core, the two splits, id maps and the raw formats, on small files written here."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lit_mmrec.cli import main
from lit_mmrec.data import MMRecAtomic
from lit_mmrec.data.interactions import DataFormatError
from lit_mmrec.data.prepare import k_core, read_amazon_json, split_labels


def read_inter(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter="\t", skiprows=1, dtype=np.int64, ndmin=2)


def read_map(path: Path) -> dict[str, int]:
    lines = path.read_text().splitlines()[1:]
    return {raw: int(i) for raw, i in (line.split("\t") for line in lines)}


def test_k_core_repeats_until_nothing_more_falls():
    # k = 2: d-w and c-z fall first (d, w, z have one interaction); then c, left with c-x alone, falls too
    pairs = ["ax", "ay", "bx", "by", "cx", "cz", "dw"]
    users = np.array(["abcd".index(u) for u, _ in pairs])
    items = np.array(["xyzw".index(i) for _, i in pairs])
    keep, rounds = k_core(users, items, 2)
    assert [p for p, kept in zip(pairs, keep) if kept] == ["ax", "ay", "bx", "by"] and rounds == 2
    assert k_core(users, items, 1)[0].all()


def test_splits_hold_out_each_users_last_interactions():
    users = np.repeat(np.arange(3), [5, 12, 20])
    times = np.concatenate([np.arange(5)[::-1], np.arange(12), np.arange(20)]).astype(float)
    labels = split_labels(users, times, "time", (8, 1, 1))
    assert labels[:5].tolist() == [2, 1, 0, 0, 0]  # user 0's times run backwards: its first rows are its last
    assert labels[5:17].tolist() == [0] * 10 + [1, 2]  # floor(1.2) = 1 each
    assert labels[17:].tolist() == [0] * 16 + [1, 1, 2, 2]
    # MMRec's rule: fewer than 10 -> one valid and one test; else int(0.2 n) held out, half to valid
    mmrec = split_labels(users, np.random.default_rng(0).random(37), "mmrec", (8, 1, 1))
    counts = [np.bincount(mmrec[users == u], minlength=3).tolist() for u in range(3)]
    assert counts == [[3, 1, 1], [10, 1, 1], [16, 2, 2]]


def write_reviews(path: Path, records: list[dict]) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)


def test_amazon_2014_reviews_to_an_mmrec_dataset(tmp_path: Path, capsys):
    rng = np.random.default_rng(1)
    records = [{"reviewerID": f"U{u}", "asin": f"B{i:03d}", "unixReviewTime": int(1e9 + rng.integers(1e6)),
                "overall": 5.0} for u in range(30) for i in rng.choice(12, size=6, replace=False)]
    records.append(dict(records[0], unixReviewTime=records[0]["unixReviewTime"] + 10))  # a repeated pair
    records.append({"reviewerID": "lonely", "asin": "B999", "unixReviewTime": 5})  # falls in the 5-core
    write_reviews(tmp_path / "reviews_Baby_5.json.gz", records)
    main(["prepare", str(tmp_path / "reviews_Baby_5.json.gz"), "--name", "tiny", "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "repeated pairs dropped  1" in out and "users" in out
    rows = read_inter(tmp_path / "out" / "tiny.inter")
    user_map, item_map = read_map(tmp_path / "out" / "u_id_mapping.csv"), read_map(tmp_path / "out" / "i_id_mapping.csv")
    assert "lonely" not in user_map and "B999" not in item_map
    assert sorted(user_map.values()) == list(range(30)) and sorted(item_map.values()) == list(range(12))
    # the id maps round-trip: every kept raw pair, once, with its earliest time
    back = {(u, i): t for u, i, t in ((r["reviewerID"], r["asin"], r["unixReviewTime"]) for r in records[::-1])}
    raw_of_user, raw_of_item = {v: k for k, v in user_map.items()}, {v: k for k, v in item_map.items()}
    assert len(rows) == 30 * 6
    for user, item, time, _ in rows:
        assert back[raw_of_user[user], raw_of_item[item]] == time
    assert user_map[records[0]["reviewerID"]] == 0  # ids in order of first appearance
    data = MMRecAtomic(str(tmp_path / "out"), "tiny").load()  # the reader takes it as it is
    assert (data.n_users, data.n_items) == (30, 12)
    assert data.train.nnz == 30 * 4 and data.valid.nnz == 30 and data.test.nnz == 30


def test_amazon_2023_and_csv_layouts(tmp_path: Path):
    records = [{"user_id": "A", "parent_asin": "P1", "asin": "C1", "timestamp": 1_600_000_000_123}]
    write_reviews(tmp_path / "Baby.jsonl", records)
    users, items, times = read_amazon_json(tmp_path / "Baby.jsonl")
    assert (users, items, times.tolist()) == (["A"], ["P1"], [1_600_000_000.123])  # parent_asin, seconds
    lines = [f"u{u},i{(u + j) % 6},4.0,{100 * j}" for u in range(8) for j in range(5)]
    (tmp_path / "ratings_Baby.csv").write_text("\n".join(lines) + "\n")
    main(["prepare", str(tmp_path / "ratings_Baby.csv"), "--name", "r", "--output", str(tmp_path / "csv"),
          "--columns", "user_id,item_id,rating,timestamp", "--split", "time", "--k", "2"])
    rows = read_inter(tmp_path / "csv" / "r.inter")
    for user in range(8):  # time split: each user's latest interaction is the test one, the one before valid
        mine = rows[rows[:, 0] == user]
        assert mine[mine[:, 2].argmax(), 3] == 2 and sorted(mine[:, 3].tolist()) == [0, 0, 0, 1, 2]


def test_bad_raw_files_name_the_file_line_and_field(tmp_path: Path):
    write_reviews(tmp_path / "r.json", [{"reviewerID": "A", "asin": "B", "unixReviewTime": 1}, {"asin": "B"}])
    with pytest.raises(DataFormatError, match=r"r.json, line 2: no reviewerID or user_id field"):
        read_amazon_json(tmp_path / "r.json")
    (tmp_path / "t.tsv").write_text("user\titem\twhen\nA\tB\tyesterday\n")
    with pytest.raises(SystemExit, match=r"t.tsv, line 2: time 'yesterday' is not a number"):
        main(["prepare", str(tmp_path / "t.tsv"), "--name", "t", "--output", str(tmp_path), "--user", "user",
              "--item", "item", "--time", "when"])
    with pytest.raises(SystemExit, match=r"no column 'timestamp'"):
        main(["prepare", str(tmp_path / "t.tsv"), "--name", "t", "--output", str(tmp_path), "--user", "user",
              "--item", "item"])
    write_reviews(tmp_path / "few.json", [{"reviewerID": "A", "asin": "B", "unixReviewTime": 1}])
    with pytest.raises(SystemExit, match="no interaction survives 5-core filtering; lower --k"):
        main(["prepare", str(tmp_path / "few.json"), "--name", "t", "--output", str(tmp_path)])
