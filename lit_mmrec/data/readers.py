"""Dataset sources: the field's file formats (MMRec atomic files, DiffMM pickles) read into InteractionData."""

from __future__ import annotations

import io
import os
import pickle
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lit_mmrec.data.interactions import (
    DataFormatError,
    InteractionData,
    binary_csr,
    check_features,
    check_splits,
)

FEATURE_SUFFIX = "_feat.npy"


class DatasetSource(ABC):
    """Something that produces an :class:`InteractionData`; chosen in config by ``class_path``."""

    @abstractmethod
    def load(self) -> InteractionData:
        """Read (or generate) the dataset."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short string identifying this dataset, used in run names and cache keys."""


def _resolve(root: str | os.PathLike) -> Path:
    path = Path(os.path.expandvars(os.path.expanduser(str(root))))
    if not path.is_absolute():
        raise DataFormatError(
            f"dataset root {str(root)!r} is relative; give an absolute path (for example "
            f"${{oc.env:LIT_MMREC_DATA}}/baby in a config) so runs do not depend on the working directory"
        )
    if not path.is_dir():
        raise DataFormatError(
            f"dataset root {path} does not exist or is not a directory; point the dataset's root at the folder "
            "that holds its files (the configs read ${LIT_MMREC_DATA}/<name>: set LIT_MMREC_DATA to the folder "
            "of your datasets, or pass --data.dataset.init_args.root)")
    return path


def read_modality_features(root: Path, n_items: int) -> dict[str, np.ndarray]:
    """Load every ``<modality>_feat.npy`` in ``root`` (sorted by name), checked and as float32."""
    files = sorted(root.glob(f"*{FEATURE_SUFFIX}"))
    features, origin = {}, {}
    for path in files:
        name = path.name[: -len(FEATURE_SUFFIX)]
        try:
            features[name] = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise DataFormatError(f"{path}: not a plain numeric .npy array ({error}); save with np.save") from error
        origin[name] = str(path)
    return check_features(features, n_items, origin)


class MMRecAtomic(DatasetSource):
    """MMRec's atomic-file format: ``<root>/<name>.inter`` plus ``<modality>_feat.npy`` files.

    The ``.inter`` file is tab-separated with a header naming at least ``userID``, ``itemID`` and
    ``x_label`` (0 = train, 1 = valid, 2 = test); other columns (rating, timestamp, ...) are ignored.
    Ids are dense non-negative integers; ``n_users``/``n_items`` are the largest id + 1.
    """

    USER, ITEM, LABEL = "userID", "itemID", "x_label"

    def __init__(self, root: str, name: str) -> None:
        self.root = root
        self.name = name

    def fingerprint(self) -> str:
        return self.name

    def load(self) -> InteractionData:
        root = _resolve(self.root)
        path = root / f"{self.name}.inter"
        if not path.is_file():
            raise DataFormatError(f"{path}: file not found; MMRec format expects <root>/<name>.inter")
        users, items, labels = self._read_columns(path)
        n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
        keys = users * n_items + items
        unique_keys, counts = np.unique(keys, return_counts=True)
        if (counts > 1).any():
            dup = unique_keys[counts > 1][0]
            raise DataFormatError(
                f"{path}: {int((counts > 1).sum())} (userID, itemID) pairs appear more than once "
                f"(first: user {dup // n_items}, item {dup % n_items}); keep one row per pair"
            )
        splits = [binary_csr(users[labels == k], items[labels == k], (n_users, n_items)) for k in (0, 1, 2)]
        check_splits(*splits, source=str(path))
        features = read_modality_features(root, n_items)
        return InteractionData(*splits, features=features, source=str(path))

    def _read_columns(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with path.open("r", encoding="utf-8") as handle:
            header = handle.readline().rstrip("\r\n").split("\t")
        columns = {name: index for index, name in enumerate(header)}
        missing = [c for c in (self.USER, self.ITEM, self.LABEL) if c not in columns]
        if missing:
            raise DataFormatError(
                f"{path}: header {header} lacks column(s) {missing}; the first line must be a tab-separated "
                f"header with {self.USER}, {self.ITEM} and {self.LABEL}"
            )
        wanted = [columns[self.USER], columns[self.ITEM], columns[self.LABEL]]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # empty files are reported below
                table = np.loadtxt(path, delimiter="\t", skiprows=1, usecols=wanted, dtype=np.int64, ndmin=2)
        except ValueError as error:
            raise DataFormatError(
                f"{path}: {self._first_non_integer(path, wanted)}; every row needs tab-separated integer "
                f"{self.USER}, {self.ITEM} and {self.LABEL} values"
            ) from error
        if table.shape[0] == 0:
            raise DataFormatError(f"{path}: no interaction rows after the header")
        users, items, labels = table[:, 0], table[:, 1], table[:, 2]
        for column, values in ((self.USER, users), (self.ITEM, items)):
            if values.min() < 0:
                row = int(np.argmax(values < 0)) + 2
                raise DataFormatError(f"{path}: negative {column} {values.min()} on line {row}; ids must be >= 0")
        bad = ~np.isin(labels, (0, 1, 2))
        if bad.any():
            row = int(np.argmax(bad)) + 2
            raise DataFormatError(
                f"{path}: {self.LABEL} {labels[bad][0]} on line {row}; use 0 (train), 1 (valid) or 2 (test)"
            )
        return users, items, labels

    def _first_non_integer(self, path: Path, wanted: list[int]) -> str:
        """Where the first value that is not an integer is: column and line of the file (the header is line 1)."""
        try:
            text = np.loadtxt(path, delimiter="\t", skiprows=1, usecols=wanted, dtype=str, ndmin=2, comments=None)
        except ValueError as error:  # a row with too few columns
            return f"a row has fewer columns than the header ({error})"
        digits = np.char.isdigit(np.char.lstrip(text, "-"))
        if digits.all():  # every value is written as an integer, yet one does not fit in int64
            return "a value is out of the int64 range"
        row, column = np.argwhere(~digits)[0]
        name = (self.USER, self.ITEM, self.LABEL)[column]
        return f"{name} '{text[row, column]}' on line {row + 2} is not an integer"


class _SparseOnlyUnpickler(pickle.Unpickler):
    """Admits only the numpy and scipy.sparse classes a pickled sparse matrix needs."""

    ALLOWED_MODULE_PREFIXES = ("scipy.sparse",)
    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }
    ALLOWED_SPARSE = {"coo_matrix", "csr_matrix", "csc_matrix", "coo_array", "csr_array", "csc_array"}

    def __init__(self, file: io.BufferedReader, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):  # noqa: ANN201 - signature fixed by pickle
        if (module, name) in self.ALLOWED or (module.startswith("numpy.dtypes") and name.endswith("DType")):
            return super().find_class(module, name)
        if module.startswith(self.ALLOWED_MODULE_PREFIXES) and name in self.ALLOWED_SPARSE:
            return getattr(sp, name)  # public namespace: old pickles name private scipy modules
        raise DataFormatError(
            f"{self.path}: pickle refers to {module}.{name}, which is not a numpy or scipy.sparse matrix class; "
            f"refusing to load it (pickles can run code). Re-save the split as a scipy.sparse matrix"
        )


def load_sparse_pickle(path: Path) -> sp.csr_matrix:
    """Load a pickled scipy sparse matrix through the restricted unpickler."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; DiffMM format expects trnMat.pkl, valMat.pkl, tstMat.pkl")
    with path.open("rb") as handle:
        try:
            obj = _SparseOnlyUnpickler(handle, path).load()
        except DataFormatError:
            raise
        except Exception as error:  # corrupt or truncated pickles raise many types
            raise DataFormatError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from error
    if not sp.issparse(obj):
        raise DataFormatError(
            f"{path}: holds a {type(obj).__name__}, expected a scipy.sparse users x items matrix"
        )
    return sp.csr_matrix(obj)


class DiffMMPickles(DatasetSource):
    """DiffMM/MMSSL format: ``trnMat.pkl``, ``valMat.pkl``, ``tstMat.pkl`` plus ``*_feat.npy``.

    Each pickle holds a scipy sparse users x items matrix; non-zero entries are interactions
    (binarised, as DiffMM does).
    """

    SPLIT_FILES = ("trnMat.pkl", "valMat.pkl", "tstMat.pkl")

    def __init__(self, root: str, name: str = "tiktok") -> None:
        self.root = root
        self.name = name

    def fingerprint(self) -> str:
        return self.name

    def load(self) -> InteractionData:
        root = _resolve(self.root)
        splits = []
        for file_name in self.SPLIT_FILES:
            matrix = load_sparse_pickle(root / file_name)
            matrix.sum_duplicates()
            matrix.eliminate_zeros()
            if matrix.nnz and (~np.isfinite(matrix.data)).any():
                raise DataFormatError(f"{root / file_name}: contains NaN or infinite entries")
            matrix.data = np.ones_like(matrix.data, dtype=np.float32)
            matrix = matrix.astype(np.float32)
            matrix.sort_indices()
            splits.append(matrix)
        check_splits(*splits, source=str(root), split_files=tuple(str(root / name) for name in self.SPLIT_FILES))
        features = read_modality_features(root, splits[0].shape[1])
        return InteractionData(*splits, features=features, source=str(root))


class Resplit(DatasetSource):
    """Another source's interactions pooled and split again, as DiffMM's TikTok release is split.

    Every user with at least ``min_interactions`` pooled interactions holds out one of them, drawn uniformly;
    a random ``valid_share`` of those users (rounded) hold theirs out for validation and the rest for test;
    everything else is training. Features pass through unchanged. TikTok's published split holds out one
    item for 3,051 validation and 6,130 test users (a share of 0.332), so ``valid_share`` defaults to 1/3.
    The published split also leaves 127 users with two or more interactions without a held-out item and
    holds out the only item of some users; this rule does neither. For a second split of the same data,
    to check that a comparison does not hinge on one draw of held-out items.
    """

    def __init__(self, source: DatasetSource, seed: int = 0, valid_share: float = 1 / 3,
                 min_interactions: int = 2) -> None:
        """
        Args:
            source: the dataset whose train, validation and test interactions are pooled.
            seed: seed of the held-out draw and of the validation/test assignment.
            valid_share: share of the users holding out an item whose item goes to validation.
            min_interactions: pooled interactions a user needs to hold one out (at least 2).
        """
        if not 0.0 < valid_share < 1.0:
            raise DataFormatError(f"Resplit: valid_share must lie strictly between 0 and 1, got {valid_share}")
        if min_interactions < 2:
            raise DataFormatError(f"Resplit: min_interactions must be at least 2 so that every user keeps a "
                                  f"training interaction, got {min_interactions}")
        self.source = source
        self.seed = seed
        self.valid_share = valid_share
        self.min_interactions = min_interactions

    def fingerprint(self) -> str:
        return f"{self.source.fingerprint()}-resplit{self.seed}"

    def load(self) -> InteractionData:
        data = self.source.load()
        pooled = (data.train + data.valid + data.test).tocsr()
        pooled.sum_duplicates()
        pooled.sort_indices()
        n_users, n_items = pooled.shape
        rows = np.repeat(np.arange(n_users), np.diff(pooled.indptr))
        rng = np.random.default_rng(self.seed)
        # within each user's run of the row-sorted entries, the entry with the largest random key is held out
        order = np.lexsort((rng.random(pooled.nnz), rows))
        holding = np.flatnonzero(np.diff(pooled.indptr) >= self.min_interactions)
        held = order[pooled.indptr[holding + 1] - 1]
        to_valid = np.zeros(n_users, dtype=bool)
        to_valid[rng.permutation(holding)[: round(self.valid_share * len(holding))]] = True
        label = np.zeros(pooled.nnz, dtype=np.int8)
        label[held] = np.where(to_valid[rows[held]], 1, 2)
        cols = pooled.indices
        splits = [binary_csr(rows[label == code], cols[label == code], (n_users, n_items)) for code in (0, 1, 2)]
        source = f"{data.source} (pooled, re-split with seed {self.seed})"
        check_splits(*splits, source=source)
        return InteractionData(*splits, features=data.features, source=source)
