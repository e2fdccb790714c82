"""Typed training configuration, per-family presets (SPEC §2) and overrides from files and the CLI.

Resolution order: preset for the task family -> per-task overrides -> config file -> ``--set``
overrides -> explicit CLI flags. The resolved config is saved next to every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import yaml


@dataclass
class ModelConfig:
    encoder: str = "mamba"  # mamba | gru | lstm | s5 | mlp
    n_blocks: int = 1  # Mamba blocks, or S5 layers
    d_state: int = 64  # Mamba: per channel; S5: complex modes per layer
    d_conv: int = 8
    expand: int = 2
    dt_rank: int = 16
    embed: int = 128
    hidden: int = 256
    n_critics: int = 8

    def encoder_kwargs(self) -> dict[str, int]:
        if self.encoder == "s5":
            return dict(n_layers=self.n_blocks, d_state=self.d_state)
        if self.encoder != "mamba":
            return {}
        return dict(n_blocks=self.n_blocks, d_state=self.d_state, d_conv=self.d_conv, expand=self.expand,
                    dt_rank=self.dt_rank)


@dataclass
class AlgoConfig:
    policy_lr: float = 6e-5  # LR_other of the policy
    critic_lr: float = 2e-4  # LR_other of the critic
    encoder_lr: float = 2e-6  # LR_CE, both context encoders
    alpha_lr: float = 1e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 2000  # transitions per update
    policy_delay: int = 2  # policy and alpha every 2nd critic step
    update_every: int = 1  # environment steps per critic step (the paper: 1)
    target_entropy: float | None = None  # None: -act_dim
    max_log_alpha: float = 1.0
    fixed_alpha: float | None = None  # set for discrete-action tasks (0.2)


@dataclass
class TrainConfig:
    env: str = "Pendulum-V"
    preset: str = "auto"  # auto: by task family; or one of PRESETS
    seed: int = 0
    steps: int = 100_000
    warmup_steps: int = 5000
    eval_every: int = 1000
    eval_episodes: int = 5
    checkpoint_every: int = 10_000
    log_every: int = 1000
    replay_capacity: int = 1_000_000
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    cuda_graphs: bool = True  # on CUDA, replay the update as CUDA graphs (resel_train/graphed_update.py)
    out: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)


# Learning rates, batch and step budget by task family (SPEC §2); "classic" (small POMDPs) borrows
# the PyBullet-POMDP rates. "cpu" is a 2-core-friendly preset: see README for what it changes.
_FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    "mujoco": {"steps": 5_000_000, "algo": dict(policy_lr=6e-5, critic_lr=2e-4, encoder_lr=2e-6, batch_size=2000)},
    "pybullet": {"steps": 1_500_000, "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, batch_size=2000)},
    "gravity": {"steps": 2_000_000, "algo": dict(policy_lr=6e-5, critic_lr=2e-4, encoder_lr=2e-6, batch_size=1000)},
    "meta": {"steps": 5_000_000, "algo": dict(policy_lr=6e-5, critic_lr=2e-4, encoder_lr=2e-6, batch_size=1000)},
    "classic": {"steps": 100_000, "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, batch_size=2000)},
    "keydoor": {"steps": 1_000_000, "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, batch_size=2000,
                                                 fixed_alpha=0.2)},
}
CPU_PRESET: dict[str, Any] = {
    "warmup_steps": 1000,
    "eval_every": 2000,
    "model": dict(d_state=16, d_conv=4, embed=64, hidden=64, dt_rank=4),
    "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=3e-4, alpha_lr=3e-4, batch_size=256, update_every=2),
}
PRESETS = (*_FAMILY_PRESETS, "cpu")

# Per-task overrides from the authors' configs (SPEC §2).
_TASK_OVERRIDES: dict[str, dict[str, Any]] = {
    "HalfCheetah": {"algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, alpha_lr=5e-4)},
    "AntBLT-V": {"algo": dict(batch_size=128, policy_lr=5e-4, critic_lr=5e-4)},
    "WalkerBLT-P": {"algo": dict(encoder_lr=5e-6)},
    "Hopper": {"algo": dict(target_entropy=0.0)},
    "Hopper-gravity": {"algo": dict(target_entropy=0.0)},
}


def resolve_config(
    env: str,
    preset: str = "auto",
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    **flags: Any,
) -> TrainConfig:
    """Build the full config for ``env``; ``flags`` with value None are ignored (unset CLI options)."""
    from resel_train.envs import task_info

    info = task_info(env)
    cfg = TrainConfig(env=env)
    family = info.family if preset == "auto" else preset
    if family == "cpu":
        _apply(cfg, _FAMILY_PRESETS[info.family])
        _apply(cfg, CPU_PRESET)
    elif family in _FAMILY_PRESETS:
        _apply(cfg, _FAMILY_PRESETS[family])
    else:
        raise ValueError(f"unknown preset {preset!r}; choose 'auto' or one of {PRESETS}")
    cfg.preset = family
    if family != "cpu":
        _apply(cfg, _TASK_OVERRIDES.get(env, {}))
    elif env in ("Hopper", "Hopper-gravity"):
        cfg.algo.target_entropy = 0.0
    if info.discrete:
        cfg.algo.fixed_alpha = 0.2
    if config_file is not None:
        _apply(cfg, load_config_file(config_file))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value, e.g. algo.batch_size=500")
        _set_path(cfg, key.strip(), yaml.safe_load(value))
    for key, value in flags.items():
        if value is not None:
            _set_path(cfg, key, value)
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config (nested tables for ``model`` and ``algo``)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_load(text) or {}
    raise ValueError(f"config file {path} must end in .toml, .yaml or .yml")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    cfg = TrainConfig()
    _apply(cfg, data)
    return cfg


def _apply(obj: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _apply(getattr(_field_owner(obj, key), key), value)
        else:
            _set_path(obj, key, value)


def _field_owner(obj: Any, path: str) -> Any:
    *parents, name = path.split(".")
    for parent in parents:
        obj = getattr(obj, parent)
    names = {f.name for f in dataclasses.fields(obj)}
    if name not in names:
        raise ValueError(f"unknown config key {path!r}; valid keys here: {sorted(names)}")
    return obj


def _set_path(cfg: Any, path: str, value: Any) -> None:
    owner = _field_owner(cfg, path)
    name = path.rsplit(".", 1)[-1]
    current = getattr(owner, name)
    if dataclasses.is_dataclass(current):
        raise ValueError(f"config key {path!r} is a section; set its fields, e.g. {path}.<field>=...")
    if isinstance(value, str) and isinstance(current, (int, float)) and not isinstance(current, bool):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"config key {path!r} expects a number, got {value!r}") from None
    if isinstance(current, bool) or isinstance(value, bool):
        if not isinstance(value, bool):
            raise ValueError(f"config key {path!r} expects true/false, got {value!r}")
    elif isinstance(current, int) and not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"config key {path!r} expects an integer, got {value!r}")
    elif isinstance(current, float) and isinstance(value, int):
        value = float(value)
    setattr(owner, name, value)
