"""The hand-run benchmark scripts stay importable (their imports follow the package) and document their use."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT

SCRIPTS = sorted((REPO_ROOT / "benchmarks").glob("*.py"))


def load_script(name: str):
    """The module of ``benchmarks/<name>.py``: definitions only, every script runs from a main() guard."""
    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_benchmark_script_imports_without_running(script):
    module = load_script(script.stem)
    assert callable(module.main)
    assert f"python benchmarks/{script.name}" in module.__doc__  # the command line it is run with


def test_generated_graph_report_by_hand(tiny_datamodule):
    """Denoisers that predict 1, 1 - 1/(I-1), ... 0 for items 0, 1, ... I-1 in every row, thresholded on the
    prediction: every user's candidates are items 0-2, a training item of the user ranks at its index + 1,
    every row is the mean row, and the thresholds count by hand."""
    from tests.conftest import build_dasrec as build
    from tests.conftest import set_constant_prediction

    model = build(tiny_datamodule, graph_top_k=3, threshold_on="prediction")
    n_items = model.n_items
    set_constant_prediction(model, torch.linspace(1.0, 0.0, n_items))
    model.generator.rebuild_batch_size = 7  # several blocks of users, the last one partial
    report = load_script("dasrec_generated_graphs").generated_graph_report(model, [0.99, 0.96, 2.0])
    train = tiny_datamodule.graphs.train_interactions
    # each user's lower median item index + 1, then the median over users
    per_user = [sorted(row.nonzero().flatten().tolist()) for row in train.to_dense()]
    user_medians = torch.tensor([float(items[(len(items) - 1) // 2] + 1) for items in per_user if items])
    for modality in model.modalities:
        entry = report[modality]
        assert entry["score_quantiles"]["max"] == 1.0 and entry["candidate_items"] == 3
        # top-3 values 1, 0.974, 0.949: one edge per user kept at 0.99, two at 0.96, none above 1
        assert entry["kept_at_threshold"] == {"0.99": {"users": model.n_users, "edges": model.n_users},
                                              "0.96": {"users": model.n_users, "edges": 2 * model.n_users},
                                              "2.0": {"users": 0, "edges": 0}}
        assert entry["own_item_rank_median"] == float(user_medians.median())
        assert entry["mean_row_share"] == 1.0


def test_dasrec_epoch_options_read_as_yaml():
    """``use_modality_anchor=false`` must reach the model as False, not as the (truthy) string 'false'."""
    parse = load_script("bench_dasrec_epoch").parse_options
    assert parse(["denoiser_hidden=1000", "noise_scale=0.3", "use_modality_anchor=false",
                  "diffusion_batch_size=null", "denoiser_precision=bfloat16"]) == {
        "denoiser_hidden": 1000, "noise_scale": 0.3, "use_modality_anchor": False,
        "diffusion_batch_size": None, "denoiser_precision": "bfloat16"}
    with pytest.raises(SystemExit, match="expected key=value"):
        parse(["denoiser_hidden"])


def test_dasrec_epoch_options_from_a_config(tmp_path):
    """--config reads the committed experiment's DASRec options (optimizer dropped); other models are refused."""
    read = load_script("bench_dasrec_epoch").experiment_options
    options = read(str(REPO_ROOT / "configs" / "experiment" / "dasrec_tiktok.yaml"))
    committed = yaml.safe_load((REPO_ROOT / "configs" / "experiment" / "dasrec_tiktok.yaml").read_text())
    expected = {k: v for k, v in committed["model"]["init_args"].items() if k != "optimizer"}
    assert options == expected and "optimizer" not in options and options["n_layers"] == 2
    (tmp_path / "model.yaml").write_text("class_path: lit_mmrec.models.DASRec\ninit_args: {denoiser_hidden: 7}\n")
    (tmp_path / "by_path.yaml").write_text("model: model.yaml\n")
    assert read(str(tmp_path / "by_path.yaml")) == {"denoiser_hidden": 7}
    with pytest.raises(SystemExit, match="not lit_mmrec.models.DASRec"):
        read(str(REPO_ROOT / "configs" / "experiment" / "diffcl_tiktok.yaml"))


def test_gpu_check_scripts_parse_and_name_what_exists():
    """benchmarks/gpu: both scripts are valid bash, and every config and benchmark check.sh runs exists."""
    import re
    import subprocess

    gpu = REPO_ROOT / "benchmarks" / "gpu"
    for script in ("prepare.sh", "check.sh"):
        subprocess.run(["bash", "-n", str(gpu / script)], check=True)
    text = (gpu / "check.sh").read_text()
    models = re.search(r"for model in ([a-z0-9 ]+); do", text).group(1).split()
    assert {"diffcl", "dasrec", "lightgcn"} <= set(models)
    for model in models:
        assert (REPO_ROOT / "configs" / "experiment" / f"{model}_synthetic.yaml").is_file(), model
    for path in re.findall(r"(benchmarks/\w+\.py|configs/experiment/\w+\.yaml)", text):
        assert (REPO_ROOT / path).is_file(), path


def test_scaling_measures_every_stage_and_fits_growth_exponents(tmp_path):
    """One child process runs setup, an epoch and a validation pass on a generated dataset and reports each;
    the growth exponent is the log-log slope (hand values: cost ~ n^1.5 over interactions, ~ n^3 over items)."""
    import argparse

    scaling = load_script("scaling")
    data = tmp_path / "tiny.yaml"
    data.write_text("dataset:\n  class_path: lit_mmrec.data.Synthetic\n  init_args: {n_users: 60, n_items: 40, "
                    "n_interactions: 600, modalities: {image: 8}, sampler: pooled}\ntrain_batch_size: 128\n")
    options = argparse.Namespace(experiment="synthetic", memory_cap_gb=8.0, timeout=300.0, output=tmp_path)
    row = scaling.measure("bpr", str(data), options, [])
    assert row["status"] == "finished" and "stopped_in" not in row and row["knn_cached"] is False
    from lit_mmrec.data import Synthetic

    train = Synthetic(n_users=60, n_items=40, n_interactions=600, modalities={"image": 8}, sampler="pooled").load().train
    assert (row["users"], row["items"], row["interactions"]) == (60, 40, train.nnz)
    assert row["steps"] == math.ceil(train.nnz / 128)  # one epoch of BPR triplets in batches of 128
    for stage in scaling.STAGES:
        assert row[f"{stage}_seconds"] > 0 and row[f"{stage}_peak_gb"] > 0.05
    assert row["setup_peak_gb"] <= row["epoch_peak_gb"] <= row["validation_peak_gb"]  # a running peak
    assert 0.0 <= row["recall20"] <= 1.0 and "epoch_seconds_projected" not in row

    options.train_steps = 2  # part of an epoch: the full one is projected from its steps
    part = scaling.measure("bpr", str(data), options, [])
    assert (part["steps"], part["epoch_steps"]) == (2, row["steps"]) and row["steps"] > 2
    assert part["epoch_seconds_projected"] > 0 and part["knn_cached"] is True

    assert scaling.growth_exponent([10.0, 40.0, 160.0], [1.0, 8.0, 64.0]) == pytest.approx(1.5)
    assert math.isnan(scaling.growth_exponent([10.0, 10.0], [1.0, 2.0]))
    rows = [{"model": "m", "scale": s, "status": "finished", "users": 1, "items": i, "interactions": n,
             "epoch_seconds": t, "epoch_peak_gb": 1.0} for s, i, n, t in (("a", 2, 100, 1.0), ("b", 4, 400, 8.0))]
    rows.append({"model": "m", "scale": "c", "status": "stopped: over 1 s", "stopped_in": "setup"})
    # a partial epoch (2 of 8 steps, 0.5 s measured) counts by its projection, 64 s = 8 s x 4^1.5 = 8 s x 2^3
    rows.append({"model": "m", "scale": "d", "status": "finished", "users": 1, "items": 8, "interactions": 1600,
                 "epoch_seconds": 0.5, "steps": 2, "epoch_steps": 8, "epoch_seconds_projected": 64.0,
                 "epoch_peak_gb": 1.0})
    scaling.write_outputs(rows, tmp_path)
    table = (tmp_path / "scaling.md").read_text()
    assert "| m | 1.50 / 3.00 | 0.00 / 0.00 |  /  |  /  |" in table and "stopped: over 1 s" in table
    assert "| 0.50 | 2 of 8 | 64.00 |" in table
