"""One epoch of each paper task through ``python -m esmgear_fast.train`` on the fixture datasets in the release
formats (DeepFRI GO zips, Atom3D PSR/MSP LMDBs, all from real chains), starting from the paper's own config
files with only the sizes shrunk (tiny random ESM, GearNet 16x2). EC runs end to end in test_train_cli.py."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from esmgear_fast.train import main

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = HERE / "data" / "fixtures"

CASES = {
    # config, fixture folder, dataset options, metrics the task must report on the test split
    "GO-BP": ("configs/GO-BP/esm_gearnet_serial.yaml", FIXTURES / "deepfri" / "GeneOntology",
              "{workers: 1, progress: false}", {"f1_max", "auprc@micro"}),
    "PSR": ("configs/PSR/esm_gearnet_serial.yaml", FIXTURES / "atom3d" / "PSR",
            "{residue_rules: esm_gearnet, workers: 1, verbose: false}", {"spearmanr", "mae", "rmse"}),
    "MSP": ("configs/MSP/esm_gearnet_serial.yaml", FIXTURES / "atom3d" / "MSP",
            "{residue_rules: esm_gearnet, workers: 1, verbose: false}", {"auroc"}),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_paper_config_trains_one_epoch_on_the_fixture(task, tmp_path):
    config, fixture, options, metrics = CASES[task]
    data = tmp_path / "data"
    shutil.copytree(fixture, data)            # caches are written next to the data
    out = tmp_path / "run"
    torch.manual_seed(0)
    assert main(["--config", str(ROOT / config), f"data.path={data}", f"data.options={options}",
                 "model.esm=random:tiny", "model.hidden_dims=[16,16]", "train.epochs=1",
                 "train.effective_batch_size=null", "run.progress=false", "run.tensorboard=false",
                 f"run.out_dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    test = summary["last_test"] if "last_test" in summary else summary["best_test"]
    assert metrics <= set(test), f"{task}: test metrics {sorted(test)}"
    assert math.isfinite(test["loss"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 1 and train[0]["proteins"] > 0 and math.isfinite(train[0]["loss"])
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "config.yaml").is_file()
