"""The typed run config: YAML + dotted overrides, unknown keys and bad values fail naming what is valid."""
import pytest
import yaml

from esmgear_fast.engine.config import (Config, ConfigError, config_from_dict, config_to_dict, load_config,
                                        save_config)


def test_defaults_are_the_papers():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.optim.optimizer == "adam" and cfg.optim.lr == 1e-4
    assert cfg.optim.factor == 0.6 and cfg.optim.patience == 5
    assert cfg.train.precision == "fp32" and cfg.train.eval_splits == ["valid", "test"]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "ec.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"dataset": "EnzymeCommission", "path": "/data/EC", "transforms": {"truncate": 550}},
        "model": {"esm": "random:tiny", "hidden_dims": [32, 32]},
        "optim": {"scheduler": "reduce_on_plateau"},
        "train": {"effective_batch_size": 8},
    }))
    cfg = load_config(path, ["optim.lr=3e-4", "data.transforms.truncate=null", "model.hidden_dims=[8,8,8]",
                             "train.eval_splits=[test]", "data.options={test_cutoff: 0.5}"])
    assert cfg.data.dataset == "EnzymeCommission" and cfg.data.path == "/data/EC"
    assert cfg.data.transforms.truncate is None          # the override wins over the file
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.scheduler == "reduce_on_plateau"
    assert cfg.model.hidden_dims == [8, 8, 8] and cfg.model.esm == "random:tiny"
    assert cfg.train.effective_batch_size == 8 and cfg.train.eval_splits == ["test"]
    assert cfg.data.options == {"test_cutoff": 0.5}


@pytest.mark.parametrize("override,names", [
    ("optim.lrr=1", ["optim.lrr", "optim.lr", "optim.scheduler"]),
    ("data.transforms.trunc=5", ["data.transforms.trunc", "data.transforms.truncate"]),
    ("foo=1", ["'foo'", "data", "model", "task", "optim", "train", "run"]),
    ("model.esmm=x", ["model.esmm", "model.esm", "model.structure"]),
])
def test_unknown_override_lists_valid_keys(override, names):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    for n in names:
        assert n in str(e.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*train.learning_rate.*Valid keys here: .*train.epochs"):
        load_config(path)


@pytest.mark.parametrize("override,match", [
    ("train.epochs=abc", "train.epochs"),
    ("train.precision=fp8", "fp32, bf16, fp16"),
    ("optim.scheduler=linear", "reduce_on_plateau"),
    ("data.dataset=ImageNet", "EnzymeCommission"),
    ("data.batch_size=0", "data.batch_size must be positive"),
    ("optim.lr=-1", "optim.lr must be positive"),
    ("optim", "key=value"),
])
def test_bad_values_fail_clearly(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["optim.lr=0.002", "data.max_residues=4000", "run.wandb=proj"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "max_residues: 4000" in text and "lr: 0.002" in text
    again = load_config(tmp_path / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)
    assert config_to_dict(config_from_dict(config_to_dict(cfg))) == config_to_dict(cfg)
    assert not list(tmp_path.glob("*.tmp"))


def test_mapping_override_replaces(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  options:\n    max_length: 400\n    workers: 2\n")
    assert load_config(path).data.options == {"max_length": 400, "workers": 2}
    assert load_config(path, ["data.options={}"]).data.options == {}
    assert load_config(path, ["data.options={workers: 1}"]).data.options == {"workers": 1}
    assert load_config(path, ["data.options.workers=1"]).data.options == {"max_length": 400, "workers": 1}
    assert load_config(path, ["data.transforms={truncate: 5}"]).data.transforms.truncate_random is True
