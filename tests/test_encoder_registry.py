"""The encoder registry is the one list of encoders: the CLI, validate_config and the sweep take exactly its
names; each encoder is built from its own config keys; the replay pads only for the encoder that needs it."""

import dataclasses
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resel.cli.main import app
from resel_experiments import sweep
from resel_train.config import ModelConfig, resolve_config, validate_config
from resel_train.nets import encoders
from resel_train.nets.registry import ENCODER_NAMES, ENCODERS, MambaConfig, S5Config, encoder_spec


def cli_encoder_choices() -> list[str]:
    """The choices `resel train --encoder` offers, as its own error message lists them."""
    result = CliRunner().invoke(app, ["train", "--env", "Pendulum-V", "--encoder", "bogus"])
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    return re.findall(r"'(\w+)'", re.search(r"is not one of (.*?)\.", text).group(1))


def test_the_cli_the_sweep_and_validate_config_take_exactly_the_registry():
    assert set(ENCODER_NAMES) == {"mamba", "gru", "lstm", "s5", "mlp"}
    assert cli_encoder_choices() == list(ENCODER_NAMES)
    assert tuple(sweep.ENCODERS) == ENCODER_NAMES
    cfg = resolve_config("Pendulum-V", "cpu")
    for name in ENCODER_NAMES:
        validate_config(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder=name)))
    with pytest.raises(ValueError) as err:
        validate_config(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder="transformer")))
    assert str(err.value).endswith("is not allowed: " + ", ".join(ENCODER_NAMES))
    grid = sweep.SweepGrid(["Pendulum-V"], 1, list(ENCODER_NAMES), "cpu")
    assert [t.encoder for t in sweep.plan_trials(grid, sweep_dir=Path("unused"))] == list(
        ENCODER_NAMES)
    with pytest.raises(ValueError, match=r"unknown encoder\(s\) \['rnn'\]"):
        sweep.plan_trials(sweep.SweepGrid(["Pendulum-V"], 1, ["rnn"]), Path("unused"))


def test_each_encoder_is_built_from_its_own_config_keys():
    model = ModelConfig(mamba=MambaConfig(n_blocks=2, d_state=6, d_conv=3, expand=2, dt_rank=5),
                        s5=S5Config(n_layers=3, d_state=7), input_layers=2)
    by_hand = {
        "mamba": {"n_blocks": 2, "d_state": 6, "d_conv": 3, "expand": 2, "dt_rank": 5, "input_layers": 2},
        "s5": {"n_layers": 3, "d_state": 7, "input_layers": 2},
        "gru": {"input_layers": 2}, "lstm": {"input_layers": 2}, "mlp": {"input_layers": 2},
    }
    for name in ENCODER_NAMES:
        kwargs = dataclasses.replace(model, encoder=name).encoder_kwargs()
        assert kwargs == by_hand[name]
        enc = encoders.make_encoder(name, 5, 8, 16, **kwargs)
        assert type(enc).__name__ == ENCODERS[name].cls and len(enc.input_more) == 1
    assert len(encoders.make_encoder("s5", 5, 8, 16, **by_hand["s5"]).layers) == 3
    assert encoder_spec("s5").config_keys() == ["model.s5.n_layers", "model.s5.d_state", "model.input_layers"]
    assert encoder_spec("gru").config_keys() == ["model.input_layers"]
    with pytest.raises(ValueError, match="the gru encoder takes no encoder_kwargs"):
        encoders.make_encoder("gru", 5, d_state=4)
    with pytest.raises(ValueError, match=r"unknown encoder 'rnn'; choose one of \('mamba'"):
        encoders.make_encoder("rnn", 5)


def test_only_mamba_pads_the_replay(tmp_path):
    from resel_train.trainer import Trainer

    model = ModelConfig(mamba=MambaConfig(d_conv=4))
    assert {n: ENCODERS[n].replay_pad(dataclasses.replace(model, encoder=n)) for n in ENCODER_NAMES} == {
        "mamba": 3, "gru": 0, "lstm": 0, "s5": 0, "mlp": 0}
    tiny = ["model.embed=8", "model.hidden=8", "model.mamba.d_state=4", "model.mamba.dt_rank=2", "replay_capacity=1000",
            "threads=1"]
    for encoder, pad in (("gru", 0), ("mamba", 3)):
        cfg = resolve_config("Pendulum-V", "cpu", overrides=[*tiny, "model.mamba.d_conv=4"], out=str(tmp_path / encoder),
                             **{"model.encoder": encoder})
        with Trainer(cfg) as trainer:
            assert trainer.learner.buffer.pad == pad


def test_a_run_saved_with_the_old_padding_resumes_with_it(tmp_path):
    """Runs from before the registry padded every encoder's replay by the Mamba d_conv - 1; resuming keeps that."""
    from resel_train.trainer import Trainer

    cfg = resolve_config("Pendulum-V", "cpu", overrides=["model.embed=8", "model.hidden=8", "replay_capacity=1000",
                                                         "threads=1"], out=str(tmp_path), **{"model.encoder": "gru"})
    with Trainer(cfg) as old:
        old.learner.buffer.pad = cfg.model.mamba.d_conv - 1  # what such a run stored
        old.save()
    with Trainer(cfg, resume=True) as resumed:
        assert resumed.learner.buffer.pad == cfg.model.mamba.d_conv - 1 == 3


def test_configs_stored_with_the_old_flat_model_keys_still_load():
    """Before each encoder had its own section, its settings were flat model.* keys read by every encoder."""
    from resel_train.config import config_from_dict, config_to_dict

    stored = config_to_dict(resolve_config("Pendulum-V", "cpu"))
    for section in ("mamba", "s5"):
        del stored["model"][section]
    stored["model"].update(n_blocks=3, d_state=5, d_conv=2, expand=4, dt_rank=6)
    cfg = config_from_dict(stored)
    assert cfg.model.mamba == MambaConfig(n_blocks=3, d_state=5, d_conv=2, expand=4, dt_rank=6)
    assert cfg.model.s5 == S5Config(n_layers=3, d_state=5)  # S5 read model.n_blocks as its layers
    assert dataclasses.replace(cfg.model, encoder="s5").encoder_kwargs() == {"n_layers": 3, "d_state": 5,
                                                                             "input_layers": 1}


@pytest.mark.parametrize("key, hint", [("model.d_state", "model.mamba.d_state or model.s5.d_state"),
                                       ("model.d_conv", "model.mamba.d_conv")])
def test_an_old_flat_key_asked_for_names_its_new_place(key, hint):
    with pytest.raises(ValueError, match=f"config key '{key}' is now in the encoder's own section: set {hint}$"):
        resolve_config("Pendulum-V", "cpu", overrides=[f"{key}=4"])


def test_every_section_of_the_model_config_is_a_registry_encoder_s():
    sections = {f.name: f.type for f in dataclasses.fields(ModelConfig) if f.name in ENCODERS}
    assert sections == {name: spec.section.__name__ for name, spec in ENCODERS.items() if spec.section}
    for name, spec in ENCODERS.items():
        if spec.section:
            with pytest.raises(ValueError, match=f"config key 'model.{name}.{dataclasses.fields(spec.section)[0].name}'"
                                                 " = 0 is not allowed"):
                validate_config(resolve_config("Pendulum-V", "cpu", overrides=[spec.config_keys()[0] + "=0"]))
