"""Experiment configs: variants, files, saved JSON, and field-by-field overrides."""

import ml_collections
import pytest

from experiments.pretrain import get_config
from jaxreg.protocol import config as config_lib


def test_variants_and_files(tmp_path):
    assert config_lib.load(None, get_config).variant == "cpu"
    assert config_lib.load("pod", get_config).mesh.fsdp == 8
    path = tmp_path / "mine.py"
    path.write_text("import ml_collections\n"
                    "def get_config(variant):\n"
                    "    return ml_collections.ConfigDict({'variant': variant, 'x': 1})\n")
    assert config_lib.load(f"{path}:small", get_config).variant == "small"
    path.write_text("import ml_collections\n"
                    "def get_config(variant='base'):\n"
                    "    return ml_collections.ConfigDict({'variant': variant, 'x': 1})\n")
    assert config_lib.load(str(path), get_config).variant == "base"
    with pytest.raises(ValueError, match="unknown pretrain variant 'tpu'"):
        config_lib.load("tpu", get_config)
    with pytest.raises(FileNotFoundError, match="no file"):
        config_lib.load(str(tmp_path / "absent.py"), get_config)


def test_saved_config_reads_back_equal(tmp_path):
    config = config_lib.override(get_config("ablations"), ["optimizer.learning_rate=0.01"])
    path = config_lib.save(config, str(tmp_path))
    again = config_lib.load(path, get_config)
    assert again.to_dict() == config.to_dict()
    assert again.ablations.learning_rates == (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def test_overrides_parse_by_the_field_type():
    config = config_lib.override(get_config("cpu"), [
        "optimizer.learning_rate=1e-3", "train.steps=20", "model.tie_embeddings=true",
        "model.positions=learned", "ablations.learning_rates=0.1,0.2", "model.mlp_dim=256"])
    assert config.optimizer.learning_rate == 1e-3 and isinstance(config.train.steps, int)
    assert config.model.tie_embeddings is True and config.model.positions == "learned"
    assert config.ablations.learning_rates == (0.1, 0.2) and config.model.mlp_dim == 256
    assert get_config("cpu").train.steps != 20  # the original is untouched


def test_bad_overrides_are_named():
    config = get_config("cpu")
    with pytest.raises(KeyError, match="unknown config field 'optimizer.learnig_rate'; did you "
                                       "mean learning_rate"):
        config_lib.override(config, ["optimizer.learnig_rate=1"])
    with pytest.raises(KeyError, match="unknown config field 'optimiser'"):
        config_lib.override(config, ["optimiser.learning_rate=1"])
    with pytest.raises(ValueError, match="expected an integer, got 'many'"):
        config_lib.override(config, ["train.steps=many"])
    with pytest.raises(ValueError, match="model is a group of fields"):
        config_lib.override(config, ["model=small"])
    with pytest.raises(ValueError, match="expects FIELD=VALUE"):
        config_lib.override(config, ["train.steps"])


def test_replace_sets_python_values_and_names_unknown_fields():
    config = config_lib.replace(get_config("cpu"), {"model.d_model": 64, "train.steps": 7})
    assert (config.model.d_model, config.train.steps) == (64, 7)
    assert get_config("cpu").model.d_model == 128
    with pytest.raises(KeyError, match="did you mean d_model"):
        config_lib.replace(config, {"model.d_modle": 1})


def test_grid_schedule_reads_the_train_group():
    train = ml_collections.ConfigDict(dict(epochs=3, batch_size=16, seeds=(2, 5), extra=1))
    assert config_lib.grid_schedule(train) == {"seeds": [2, 5], "epochs": 3, "batch_size": 16}
    with pytest.raises(KeyError, match="batch_size"):
        config_lib.grid_schedule(ml_collections.ConfigDict(dict(epochs=3, seeds=(0,))))
