"""``lit_mmrec report`` on tiny synthetic data: two models (one with a varied parameter) at two seeds, its
tables checked against values computed here from the runs' own files."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from statistics import mean

import pytest
import torch
import yaml

from lit_mmrec.cli import main
from lit_mmrec.report import Study, StudyError, read_metrics
from tests.conftest import REPO_ROOT, TINY_DATA

SEEDS = [3, 4]


def write_study(tmp_path: Path) -> Path:
    common = ["--trainer.max_epochs=2", f"--data.cache_dir={tmp_path / 'cache'}",
              *[f"{a}={b}" for a, b in zip(TINY_DATA[::2], TINY_DATA[1::2])]]
    experiments = REPO_ROOT / "configs" / "experiment"
    path = tmp_path / "tiny_study.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "title": "tiny synthetic", "seeds": SEEDS, "reference": "LightGCN",
        "models": {"LightGCN": {"config": [str(experiments / "lightgcn_synthetic.yaml")], "args": common},
                   "BPR": {"config": [str(experiments / "bpr_synthetic.yaml")], "args": common}},
        "vary": {"model": "BPR", "parameter": "model.init_args.embedding_dim", "values": [8]},
    }, sort_keys=False))
    return path


def test_study_files_are_checked_before_anything_runs(tmp_path: Path):
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"seeds": [1], "models": {"A": {"config": ["missing.yaml"]}}}))
    with pytest.raises(StudyError, match=r"s.yaml: models.A.config: .*missing.yaml does not exist"):
        Study.load(study)
    study.write_text(yaml.safe_dump({"seeds": "1", "models": {"A": {"config": ["s.yaml"]}}}))
    with pytest.raises(StudyError, match="`seeds` must be a non-empty list of integers"):
        Study.load(study)
    study.write_text(yaml.safe_dump({"seeds": [1], "reference": "B", "models": {"A": {"config": ["s.yaml"]}}}))
    with pytest.raises(StudyError, match="reference 'B' is not one of the models"):
        Study.load(study)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_report_trains_collects_and_compares_against_the_reference(tmp_path: Path, capsys):
    study_file, output = write_study(tmp_path), tmp_path / "out"
    main(["report", "--study", str(study_file), "--output", str(output), "--jobs", "2"])
    runs = {(label, seed): output / "runs" / slug / f"seed-{seed}" / "lightning_logs" / "version_0"
            for label, slug in (("LightGCN", "LightGCN"), ("BPR", "BPR"), ("BPR embedding_dim=8", "BPR_embedding_dim_8"))
            for seed in SEEDS}
    assert all((run / "metrics.csv").is_file() for run in runs.values())
    assert yaml.safe_load((runs["LightGCN", 4] / "config.yaml").read_text())["seed_everything"] == 4
    assert yaml.safe_load((runs["BPR embedding_dim=8", 3] / "config.yaml").read_text())["model"]["init_args"][
        "embedding_dim"] == 8

    # results.csv: mean and sample std over the two seeds of what each run's metrics.csv holds
    table = {row["model"]: row for row in read_csv(output / "results.csv")}
    assert list(table) == ["LightGCN", "BPR", "BPR embedding_dim=8"]
    for label in table:
        rows = {seed: read_metrics(runs[label, seed]) for seed in SEEDS}
        test = [next(r["test/ndcg@20"] for r in rows[seed] if "test/ndcg@20" in r) for seed in SEEDS]
        best = [max((r for r in rows[seed] if "val/recall@20" in r), key=lambda r: r["val/recall@20"])
                for seed in SEEDS]
        assert float(table[label]["test/ndcg@20_mean"]) == pytest.approx((test[0] + test[1]) / 2)
        assert float(table[label]["test/ndcg@20_std"]) == pytest.approx(abs(test[0] - test[1]) / math.sqrt(2))
        assert float(table[label]["val/recall@20_mean"]) == pytest.approx(mean(r["val/recall@20"] for r in best))
        assert float(table[label]["best_epoch_mean"]) in (0.0, 0.5, 1.0)
        assert float(table[label]["peak_memory_mb_mean"]) > 10 and float(table[label]["seconds_per_epoch_mean"]) > 0
    markdown = (output / "results.md").read_text()
    bpr = table["BPR"]
    assert f"{float(bpr['test/recall@20_mean']):.4f} +- {float(bpr['test/recall@20_std']):.4f}" in markdown

    # pairs.csv: B - A over users, per seed and pooled, from the per-user results cached beside the checkpoints
    pairs = read_csv(output / "pairs.csv")
    assert {(p["model"], p["split"], p["seed"]) for p in pairs} == {
        (m, s, str(seed)) for m in ("BPR", "BPR embedding_dim=8") for s in ("val", "test") for seed in [*SEEDS, "pooled"]}

    def per_user(label: str, seed: int, split: str) -> dict[str, torch.Tensor]:
        return torch.load(next((runs[label, seed] / "checkpoints").glob(f"best-*.{split}@20.pt")), weights_only=True)

    for seed in SEEDS:
        a, b = per_user("LightGCN", seed, "test"), per_user("BPR", seed, "test")
        logged = next(r["test/recall@20"] for r in read_metrics(runs["BPR", seed]) if "test/recall@20" in r)
        assert float(b["recall"].mean()) == pytest.approx(logged, abs=1e-6)  # the same evaluation as the run's
        d = (b["recall"] - a["recall"]).double()
        se = float(d.std()) / math.sqrt(len(d))
        row = next(p for p in pairs if (p["model"], p["split"], p["metric"], p["seed"]) ==
                   ("BPR", "test", "recall@20", str(seed)))
        assert float(row["difference"]) == pytest.approx(float(d.mean()))
        assert float(row["standard_error"]) == pytest.approx(se)
        assert float(row["p_value"]) == pytest.approx(math.erfc(abs(float(d.mean())) / se / math.sqrt(2)))
    pooled_d = torch.stack([(per_user("BPR", s, "val")["ndcg"] - per_user("LightGCN", s, "val")["ndcg"]).double()
                            for s in SEEDS]).mean(0)
    row = next(p for p in pairs if (p["model"], p["split"], p["metric"], p["seed"]) == ("BPR", "val", "ndcg@20",
                                                                                          "pooled"))
    assert float(row["difference"]) == pytest.approx(float(pooled_d.mean()))
    assert float(row["standard_error"]) == pytest.approx(float(pooled_d.std()) / math.sqrt(len(pooled_d)))
    assert "| BPR | test | recall@20 |" in (output / "pairs.md").read_text()
    # the sensitivity plot places the varied model's own run at its configured value
    from lit_mmrec.report import base_value
    saved = yaml.safe_load((runs["BPR", 3] / "config.yaml").read_text())["model"]["init_args"]["embedding_dim"]
    assert base_value(runs["BPR", 3] / "config.yaml", "model.init_args.embedding_dim") == float(saved) != 8.0
    assert base_value(runs["BPR", 3] / "config.yaml", "model.init_args.absent") is None
    for plot in ("curves.png", "sensitivity.png"):
        assert (output / plot).read_bytes()[:4] == b"\x89PNG"

    # a second report trains nothing: every run is finished
    stamps = {key: (run / "metrics.csv").stat().st_mtime_ns for key, run in runs.items()}
    capsys.readouterr()
    main(["report", "--study", str(study_file), "--output", str(output)])
    assert "report: training" not in capsys.readouterr().out
    assert stamps == {key: (run / "metrics.csv").stat().st_mtime_ns for key, run in runs.items()}


STUDIES = sorted((REPO_ROOT / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_committed_study_files_load_and_their_configs_compose(path: Path, capsys, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("LIT_MMREC_DATA", str(tmp_path))  # the data is not read; its path must resolve
    study = Study.load(path)
    assert study.reference in [model.label for model in study.models] and len(study.seeds) >= 3
    for model in study.models:
        arguments = [a for config in model.configs for a in ("--config", str(config))]
        with pytest.raises(SystemExit) as ended:  # --print_config parses the composition, then exits
            main(["fit", *arguments, *model.args, "--print_config"])
        assert ended.value.code in (0, None), model.label
        assert "class_path: lit_mmrec.models." in capsys.readouterr().out
