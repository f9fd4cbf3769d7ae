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
