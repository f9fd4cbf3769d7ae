"""Dataset readers: both file formats, every bad input, and the real data when present."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from lit_mmrec.data import DataFormatError, DatasetSource, DiffMMPickles, InteractionData, MMRecAtomic, Resplit
from tests.conftest import require_dataset

GOOD_ROWS = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (1, 1, 0), (1, 2, 2), (2, 0, 0), (2, 2, 0), (2, 1, 1), (0, 3, 2)]


def write_inter(root: Path, rows, header="userID\titemID\tx_label", name="toy", extra=None) -> Path:
    lines = [header] + ["\t".join(str(v) for v in row) for row in rows]
    path = root / f"{name}.inter"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mmrec_reads_splits_and_features(tmp_path: Path):
    write_inter(tmp_path, [(*row, 5, 1234) for row in GOOD_ROWS],
                header="userID\titemID\tx_label\trating\ttimestamp")
    np.save(tmp_path / "image_feat.npy", np.arange(8, dtype=np.float16).reshape(4, 2))
    np.save(tmp_path / "text_feat.npy", np.ones((4, 3), dtype=np.float32))
    data = MMRecAtomic(str(tmp_path), "toy").load()
    assert (data.n_users, data.n_items) == (3, 4)
    assert data.train.nnz == 5 and data.valid.nnz == 2 and data.test.nnz == 2
    assert data.train[0].indices.tolist() == [0, 1]
    assert data.test[1].indices.tolist() == [2]
    assert list(data.features) == ["image", "text"]
    assert data.features["image"].dtype == np.float32  # float16 converted
    assert data.feature_dims == {"image": 2, "text": 3}
    assert data.select_modalities(["text"]).feature_dims == {"text": 3}


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("user\titemID\tx_label", GOOD_ROWS, "lacks column"),
        ("userID\titemID\tx_label", [(0, "a", 0)] + GOOD_ROWS, "itemID 'a' on line 2 is not an integer"),
        ("userID\titemID\tx_label", [(0, 1.5, 0)] + GOOD_ROWS, "itemID '1.5' on line 2 is not an integer"),
        ("userID\titemID\tx_label", [(0, 10**20, 0)] + GOOD_ROWS, "out of the int64 range"),
        ("userID\titemID\tx_label", GOOD_ROWS + [(-1, 0, 0)], "negative userID"),
        ("userID\titemID\tx_label", GOOD_ROWS + [(0, -2, 0)], "negative itemID"),
        ("userID\titemID\tx_label", GOOD_ROWS + [(3, 0, 7)], "x_label 7"),
        ("userID\titemID\tx_label", GOOD_ROWS + [(0, 0, 1)], "more than once"),
        ("userID\titemID\tx_label", [row for row in GOOD_ROWS if row[2] != 2], "test split is empty"),
        ("userID\titemID\tx_label", [], "no interaction rows"),
    ],
)
def test_mmrec_bad_inputs_name_file_and_problem(tmp_path: Path, header, rows, message):
    path = write_inter(tmp_path, rows, header=header)
    with pytest.raises(DataFormatError, match=message) as error:
        MMRecAtomic(str(tmp_path), "toy").load()
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ones((3, 2), dtype=np.float32), "has 3 rows but the interactions have 4 items"),
        (np.array([[1.0, np.nan]] * 4, dtype=np.float32), "NaN or infinite"),
        (np.array([[1.0, np.inf]] * 4, dtype=np.float32), "NaN or infinite"),
        (np.ones(4, dtype=np.float32), "must be 2-D"),
    ],
)
def test_mmrec_bad_feature_files(tmp_path: Path, array, message):
    write_inter(tmp_path, GOOD_ROWS)
    np.save(tmp_path / "image_feat.npy", array)
    with pytest.raises(DataFormatError, match=message) as error:
        MMRecAtomic(str(tmp_path), "toy").load()
    assert "image_feat.npy" in str(error.value)


def test_missing_inter_file_and_relative_root(tmp_path: Path):
    with pytest.raises(DataFormatError, match="file not found"):
        MMRecAtomic(str(tmp_path), "nothing").load()
    with pytest.raises(DataFormatError, match="relative"):
        MMRecAtomic("some/relative/dir", "toy").load()


def test_unknown_modality_selection(tmp_path: Path):
    write_inter(tmp_path, GOOD_ROWS)
    np.save(tmp_path / "image_feat.npy", np.ones((4, 2), dtype=np.float32))
    data = MMRecAtomic(str(tmp_path), "toy").load()
    with pytest.raises(DataFormatError, match=r"\['audio'\]"):
        data.select_modalities(["audio"])


def write_pickles(root: Path, shape=(3, 4)) -> None:
    train = sp.coo_matrix(([1.0, 1.0, 1.0], ([0, 1, 2], [0, 1, 2])), shape=shape)
    valid = sp.coo_matrix(([1.0], ([0], [3])), shape=shape)
    test = sp.coo_matrix(([1.0, 1.0], ([1, 2], [3, 0])), shape=shape)
    for name, matrix in zip(DiffMMPickles.SPLIT_FILES, (train, valid, test)):
        with (root / name).open("wb") as handle:
            pickle.dump(matrix, handle)


def test_diffmm_reads_pickles(tmp_path: Path):
    write_pickles(tmp_path)
    np.save(tmp_path / "audio_feat.npy", np.ones((4, 5), dtype=np.float16))
    data = DiffMMPickles(str(tmp_path)).load()
    assert (data.n_users, data.n_items) == (3, 4)
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (3, 1, 2)
    assert data.feature_dims == {"audio": 5}


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_diffmm_refuses_code_in_pickles(tmp_path: Path, capsys):
    write_pickles(tmp_path)
    with (tmp_path / "valMat.pkl").open("wb") as handle:
        pickle.dump(Exploit(), handle)
    with pytest.raises(DataFormatError, match="builtins.print") as error:
        DiffMMPickles(str(tmp_path)).load()
    assert "valMat.pkl" in str(error.value)
    assert "must never run" not in capsys.readouterr().out


def test_diffmm_refuses_non_sparse_pickle(tmp_path: Path):
    write_pickles(tmp_path)
    with (tmp_path / "tstMat.pkl").open("wb") as handle:
        pickle.dump(np.ones((3, 4)), handle)
    with pytest.raises(DataFormatError, match="holds a ndarray"):
        DiffMMPickles(str(tmp_path)).load()


def test_diffmm_shape_mismatch_and_empty_split(tmp_path: Path):
    write_pickles(tmp_path)
    with (tmp_path / "valMat.pkl").open("wb") as handle:
        pickle.dump(sp.coo_matrix(([1.0], ([0], [0])), shape=(3, 5)), handle)
    with pytest.raises(DataFormatError, match="valid split has shape"):
        DiffMMPickles(str(tmp_path)).load()
    with (tmp_path / "valMat.pkl").open("wb") as handle:
        pickle.dump(sp.coo_matrix((3, 4)), handle)
    with pytest.raises(DataFormatError, match=r"valMat\.pkl: the valid split is empty"):  # names the file
        DiffMMPickles(str(tmp_path)).load()


@pytest.mark.real_data
def test_real_tiktok():
    root = require_dataset("tiktok")
    data = DiffMMPickles(str(root)).load()
    assert (data.n_users, data.n_items) == (9308, 6710)
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (59541, 3051, 6130)
    assert data.feature_dims == {"audio": 128, "image": 128}
    assert all(array.dtype == np.float32 for array in data.features.values())


@pytest.mark.real_data
def test_real_baby():
    root = require_dataset("baby")
    data = MMRecAtomic(str(root), "baby").load()
    assert (data.n_users, data.n_items) == (19445, 7050)
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (118551, 21682, 20559)


class _Fixed(DatasetSource):
    """A source that returns the data it was given."""

    def __init__(self, data: InteractionData) -> None:
        self.data = data

    def fingerprint(self) -> str:
        return "fixed"

    def load(self) -> InteractionData:
        return self.data


def test_resplit_holds_out_one_item_of_each_user_with_two_or_more():
    # pooled degrees 3, 1, 2, 4, 2, 5, 2: users 0 and 2-6 (six users) hold one item out; round(6 / 3) = 2 to valid
    pairs = {0: [0, 1, 2], 1: [3], 2: [4, 5], 3: [0, 2, 4, 6], 4: [1, 7], 5: [2, 3, 5, 6, 7], 6: [0, 7]}
    rows = np.array([u for u, items in pairs.items() for _ in items])
    cols = np.array([i for items in pairs.values() for i in items])
    pooled = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(7, 8))
    mask = np.zeros(len(rows), dtype=bool)
    mask[[2, 4]] = True  # the source's own split: two entries in valid, one in test, the rest in train
    test_mask = np.zeros(len(rows), dtype=bool)
    test_mask[8] = True

    def part(keep):
        return sp.csr_matrix((np.ones(keep.sum(), dtype=np.float32), (rows[keep], cols[keep])), shape=(7, 8))
    features = {"image": np.arange(16, dtype=np.float32).reshape(8, 2)}
    source = _Fixed(InteractionData(part(~mask & ~test_mask), part(mask), part(test_mask), features, "tiny"))
    data = Resplit(source, seed=5).load()
    train, valid, test = data.train, data.valid, data.test
    assert (train + valid + test - pooled).nnz == 0 and (train + valid + test).max() == 1  # a partition of the pool
    held = np.diff(valid.indptr) + np.diff(test.indptr)
    assert held.tolist() == [1, 0, 1, 1, 1, 1, 1]
    assert (np.diff(valid.indptr) > 0).sum() == 2 and (np.diff(test.indptr) > 0).sum() == 4
    assert np.diff(train.indptr).tolist() == [2, 1, 1, 3, 1, 4, 1]
    assert data.features["image"] is features["image"] and data.source.startswith("tiny")
    again, other = Resplit(source, seed=5).load(), Resplit(source, seed=6).load()
    assert (again.valid != valid).nnz == 0 and (again.test != test).nnz == 0  # seeded
    assert (other.valid != valid).nnz + (other.test != test).nnz > 0
    assert Resplit(source, seed=5).fingerprint() == "fixed-resplit5"
    with pytest.raises(DataFormatError, match="valid_share"):
        Resplit(source, valid_share=1.0)
    with pytest.raises(DataFormatError, match="min_interactions"):
        Resplit(source, min_interactions=1)


def test_resplit_of_real_tiktok():
    root = require_dataset("tiktok")
    published = DiffMMPickles(str(root)).load()
    data = Resplit(DiffMMPickles(str(root)), seed=7).load()
    pooled = published.train + published.valid + published.test
    assert (data.train + data.valid + data.test - pooled).nnz == 0
    holding = int((np.diff(pooled.indptr) >= 2).sum())
    assert holding == 9297  # every user but the 11 with one interaction
    assert data.valid.nnz == round(holding / 3) == 3099 and data.test.nnz == holding - 3099
    assert np.diff(data.valid.indptr).max() == 1 and np.diff(data.test.indptr).max() == 1
    assert np.diff(data.train.indptr).min() == 1  # every user keeps a training interaction
    # a new draw: few validation items are the published ones (383 of 3,099 at seed 7, users of two or three
    # items often drawing the same), against all of them were the draw the published one
    assert data.valid.multiply(published.valid).nnz < 0.2 * data.valid.nnz
