"""Where config values come from: a preset named anywhere is applied, argument keys follow the documented
order (preset -> per-task -> file -> --set -> flags) or are refused naming both places, YAML pitfalls are
refused naming the file, and ``resel config show`` prints what ``resel train`` would use."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from typer.testing import CliRunner

from resel import RESeL
from resel.cli.main import app
from resel_train.config import FIELD_HELP, PRESETS, field_rows, load_config_file, resolve_config
from resel_train.nets.registry import ENCODERS

runner = CliRunner()
TINY = {"model.mamba.d_state": 4, "model.mamba.d_conv": 4, "model.embed": 16, "model.hidden": 16, "model.mamba.dt_rank": 2,
        "algo.batch_size": 32, "warmup_steps": 75, "eval_episodes": 1, "threads": 1}


@pytest.fixture
def gpu(monkeypatch):
    """Pretend CUDA is there, so that ``auto`` would pick the paper preset (and a preset that only
    relabelled the run would be caught: paper and cpu sizes differ)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def asdict(cfg):
    return dataclasses.asdict(cfg)


def test_set_preset_cpu_resolves_the_same_config_as_the_preset_flag(gpu, tmp_path):
    flag = resolve_config("Walker2d-gravity", "cpu")
    assert (flag.preset, flag.model.hidden, flag.model.mamba.d_state, flag.algo.batch_size) == ("cpu", 64, 16, 256)
    assert resolve_config("Walker2d-gravity").model.hidden == 256  # what auto gives here: the paper size
    assert asdict(resolve_config("Walker2d-gravity", overrides=["preset=cpu"])) == asdict(flag)
    for name, text in (("c.toml", 'preset = "cpu"\n'), ("c.yaml", "preset: cpu\n")):
        (tmp_path / name).write_text(text)
        assert asdict(resolve_config("Walker2d-gravity", config_file=tmp_path / name)) == asdict(flag), name
    # the CLI's own view of both: `resel config show` prints the same table
    shown = [runner.invoke(app, ["config", "show", "--env", "Walker2d-gravity", *args]) for args in
             (["--preset", "cpu"], ["--set", "preset=cpu"], ["--config", str(tmp_path / "c.yaml")])]
    assert all(r.exit_code == 0 for r in shown), [r.output for r in shown]
    assert shown[0].output == shown[1].output == shown[2].output


def test_the_preset_is_the_last_one_named_and_per_task_settings_follow_it(gpu, tmp_path):
    (tmp_path / "c.yaml").write_text("preset: cpu\nalgo:\n  batch_size: 77\n")
    file = tmp_path / "c.yaml"
    assert resolve_config("Walker2d-gravity", config_file=file).algo.batch_size == 77  # file keys after the preset
    assert resolve_config("Walker2d-gravity", "gravity", file).preset == "gravity"  # the flag wins
    assert resolve_config("Walker2d-gravity", "gravity", file).algo.batch_size == 77
    assert resolve_config("Walker2d-gravity", "auto", file, ["preset=meta"]).preset == "meta"  # --set over file
    # per-task overrides apply to a preset from a file too (HalfCheetah's own rates; Hopper's entropy target)
    (tmp_path / "m.toml").write_text('preset = "mujoco"\n')
    cheetah = resolve_config("HalfCheetah", "auto", tmp_path / "m.toml", device="cpu")
    assert (cheetah.preset, cheetah.algo.policy_lr, cheetah.algo.alpha_lr) == ("mujoco", 3e-4, 5e-4)
    with pytest.raises(ValueError, match=r"unknown preset 'fast' \(from --set \(overrides\)\)"):
        resolve_config("Wind", overrides=["preset=fast"])
    with pytest.raises(ValueError, match=r"config key 'preset' in config file .*c2.toml must be a preset name"):
        (tmp_path / "c2.toml").write_text("preset = 3\n")
        resolve_config("Wind", config_file=tmp_path / "c2.toml")


@pytest.mark.parametrize("key,file_value,set_value,flag_value", [
    ("seed", 3, 4, 5), ("out", "from_file", "from_set", "from_flag"), ("device", "cuda", "cuda:1", "cpu")])
def test_argument_keys_follow_file_then_set_then_flag(tmp_path, key, file_value, set_value, flag_value):
    file = tmp_path / "c.yaml"
    file.write_text(f"{key}: {file_value}\n")
    assert getattr(resolve_config("Wind", config_file=file), key) == file_value
    assert getattr(resolve_config("Wind", config_file=file, overrides=[f"{key}={set_value}"]), key) == set_value
    both = resolve_config("Wind", config_file=file, overrides=[f"{key}={set_value}"], **{key: flag_value})
    assert getattr(both, key) == flag_value
    assert getattr(resolve_config("Wind", config_file=file, **{key: None}), key) == file_value  # None: not given


def test_an_env_key_that_disagrees_with_the_task_is_refused_naming_both(tmp_path):
    (tmp_path / "c.toml").write_text('env = "Pendulum-P"\n')
    with pytest.raises(ValueError, match=r"'env' = 'Pendulum-P' in config file .*c.toml disagrees with the task "
                                         r"'Wind' given by --env"):
        resolve_config("Wind", config_file=tmp_path / "c.toml")
    with pytest.raises(ValueError, match=r"'env' = 'Pendulum-P' in --set .* disagrees with the task 'Wind'"):
        resolve_config("Wind", overrides=["env=Pendulum-P"])
    assert resolve_config("Pendulum-P", config_file=tmp_path / "c.toml").env == "Pendulum-P"  # agreeing is fine


def test_yaml_duplicate_keys_deep_nesting_and_syntax_errors_name_the_file(tmp_path):
    cases = {
        "dup.yaml": ("seed: 1\nsteps: 5\nseed: 2\n", ["dup.yaml", "'seed' appears twice", "line 3"]),
        "dup_nested.yaml": ("algo:\n  gamma: 0.9\n  gamma: 0.8\n", ["dup_nested.yaml", "'gamma' appears twice"]),
        "deep.yaml": ("[" * 100_000, ["deep.yaml", "nested too deeply"]),
        "bad.yaml": ("algo: [1, 2\n", ["bad.yaml", "is not valid YAML"]),
        "dup.toml": ("seed = 1\nseed = 2\n", ["dup.toml", "is not valid TOML"]),
    }
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError) as info:
            load_config_file(tmp_path / name)
        message = str(info.value)
        assert "\n" not in message and "recursion" not in message, (name, message)
        for word in words:
            assert word in message, (name, message)
    with pytest.raises(ValueError, match=r"--set 'algo=\{gamma: 1, gamma: 2\}' is not valid YAML.*appears twice"):
        resolve_config("Wind", overrides=["algo={gamma: 1, gamma: 2}"])


def test_the_api_takes_argument_keys_from_a_file_and_set(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text(f"seed: 3\nout: {tmp_path / 'from_file'}\npreset: cpu\n")
    model = RESeL("Wind", config=file, **TINY)
    assert model.run_dir == tmp_path / "from_file" / "Wind_mamba_s3" and model.config.preset == "cpu"
    model = RESeL("Wind", config=file, set=["seed=4"], **TINY)
    assert model.run_dir == tmp_path / "from_file" / "Wind_mamba_s4"
    model = RESeL("Wind", seed=5, out=tmp_path / "arg", config=file, set=["seed=4"], **TINY)  # arguments win
    assert model.run_dir == tmp_path / "arg" / "Wind_mamba_s5"
    with pytest.raises(ValueError, match="disagrees with the task 'Wind'"):
        RESeL("Wind", out=str(tmp_path), env="Pendulum-P")


def test_cli_train_accepts_argument_keys_through_set(tmp_path):
    args = ["train", "--env", "Wind", "--steps", "77", "--no-progress", "--set", "seed=4", "--set",
            f"out={tmp_path}", "--set", "device=cpu", "--set", "preset=cpu"]
    args += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "preset: cpu" in result.output and "no CUDA GPU" not in result.output  # the preset was asked for
    assert (tmp_path / "Wind_mamba_s4" / "checkpoint.pt").is_file()


def test_config_show_prints_every_field_with_its_help_and_refuses_bad_input():
    result = runner.invoke(app, ["config", "show", "--env", "Pendulum-V", "--preset", "cpu", "--set",
                                 "algo.batch_size=123"])
    assert result.exit_code == 0, result.output
    cfg = resolve_config("Pendulum-V", "cpu", overrides=["algo.batch_size=123"])
    lines = result.output.splitlines()
    for key, _, value, text in field_rows(cfg):
        row = next((line for line in lines if line.startswith(f"│ {key} ")), None)
        assert row is not None, key
        assert f" {'null' if value is None else value} " in row and text in row, row
    assert "│ algo.batch_size " in result.output and " 123 " in next(line for line in lines if "algo.batch_size" in line)
    section_keys = [k for spec in ENCODERS.values() for k in spec.config_keys() if k != "model.input_layers"]
    keys = [row[0] for row in field_rows(cfg)]  # every field has one line of help, from FIELD_HELP or its section
    assert sorted(keys) == sorted([*FIELD_HELP, *section_keys])
    assert all(row[3] for row in field_rows(cfg))
    bad = runner.invoke(app, ["config", "show", "--env", "Pendulum-V", "--set", "algo.gamma=3"])
    assert bad.exit_code == 2 and "'algo.gamma'" in bad.output and "Traceback" not in bad.output


def test_train_help_lists_every_preset_with_a_line():
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in ("auto", *PRESETS):
        assert f"- {name}: " in result.output, name


def test_a_sweep_with_set_preset_cpu_plans_cpu_sized_trials(gpu, tmp_path):
    """The case that showed the bug: `resel sweep --set preset=cpu` trained paper-size models."""
    from resel_experiments.sweep import SweepGrid, plan_trials

    trials = plan_trials(SweepGrid(["Walker2d-gravity"], 2, overrides=["preset=cpu"]), tmp_path, 1)
    flag = resolve_config("Walker2d-gravity", "cpu", seed=1, out=str(tmp_path.resolve()), threads=1)
    assert [t.config.preset for t in trials] == ["cpu", "cpu"]
    assert asdict(trials[1].config) == asdict(flag)
