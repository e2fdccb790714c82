"""Typed training configuration, per-family presets and overrides from files and the CLI.

Resolution order: preset for the task family -> per-task overrides -> config file -> ``--set``
overrides -> explicit CLI flags. The resolved config is saved next to every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import yaml


@dataclass
class ModelConfig:
    encoder: str = "mamba"  # a name of the encoder registry (resel_train/nets/registry.py)
    n_blocks: int = 1  # Mamba blocks, or S5 layers
    d_state: int = 64  # Mamba: per channel; S5: complex modes per layer
    d_conv: int = 8
    expand: int = 2
    dt_rank: int = 16
    embed: int = 128
    hidden: int = 256
    n_critics: int = 8
    input_layers: int = 1  # layers of the MLP before the memory core (Key-to-Door: 3)

    def encoder_kwargs(self) -> dict[str, int]:
        """The encoder's constructor arguments: the keys its registry entry reads, and input_layers."""
        from resel_train.nets.registry import encoder_spec

        return encoder_spec(self.encoder).kwargs(self)


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
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    cuda_graphs: bool = True  # on CUDA, replay the update as CUDA graphs (resel_train/graphed_update.py)
    out: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)


# Learning rates, batch and step budget by task family; "classic" (small POMDPs) borrows
# the PyBullet-POMDP rates. "cpu" is a 2-core-friendly preset: see README for what it changes.
_FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    "mujoco": {"steps": 5_000_000, "algo": dict(policy_lr=6e-5, critic_lr=2e-4, encoder_lr=2e-6, batch_size=2000)},
    "pybullet": {"steps": 1_500_000, "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, batch_size=2000)},
    "gravity": {"steps": 2_000_000, "algo": dict(policy_lr=6e-5, critic_lr=2e-4, encoder_lr=2e-6, batch_size=1000)},
    "meta": {"steps": 5_000_000, "algo": dict(policy_lr=6e-5, critic_lr=2e-4, encoder_lr=2e-6, batch_size=1000)},
    "classic": {"steps": 100_000, "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, batch_size=2000)},
    # the paper's Key-to-Door model: a 3-layer input MLP and no short conv (d_conv 1); batch 1000 (its Table 2)
    "keydoor": {"steps": 1_000_000, "model": dict(input_layers=3, d_conv=1),
                "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, batch_size=1000, fixed_alpha=0.2)},
}
CPU_PRESET: dict[str, Any] = {
    "warmup_steps": 1000,
    "eval_every": 2000,
    "model": dict(d_state=16, d_conv=4, embed=64, hidden=64, dt_rank=4),
    "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=3e-4, alpha_lr=3e-4, batch_size=256, update_every=2),
}
# what "cpu" keeps of a family's own model (Key-to-Door: still no short conv)
_CPU_FAMILY_MODEL: dict[str, dict[str, Any]] = {"keydoor": {"model": dict(d_conv=1)}}
PRESETS = (*_FAMILY_PRESETS, "cpu")

# Per-task overrides from the authors' configs.
_TASK_OVERRIDES: dict[str, dict[str, Any]] = {
    "HalfCheetah": {"algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, alpha_lr=5e-4)},
    "AntBLT-V": {"algo": dict(batch_size=128, policy_lr=5e-4, critic_lr=5e-4)},
    "WalkerBLT-P": {"algo": dict(encoder_lr=5e-6)},
    "Hopper": {"algo": dict(target_entropy=0.0)},
    "Hopper-gravity": {"algo": dict(target_entropy=0.0)},
    "KeyToDoor-500": {"model": dict(n_blocks=4)},  # the paper's longest distractor: four Mamba blocks
}


def resolve_config(
    env: str,
    preset: str = "auto",
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    **flags: Any,
) -> TrainConfig:
    """Build the full config for ``env``; ``flags`` with value None are ignored (unset CLI options).

    Types are checked here; ranges by :func:`validate_config`, which the trainer runs on the config
    it will use (on a resume: the run's stored config with the requested changes).
    """
    from resel_train.envs import task_info

    info = task_info(env)
    cfg = TrainConfig(env=env)
    device = flags.get("device") or parse_overrides(overrides or []).get("device") or cfg.device
    family = resolve_preset(preset, info.family, str(device))
    if family == "cpu":
        _apply(cfg, _FAMILY_PRESETS[info.family])
        _apply(cfg, CPU_PRESET)
        _apply(cfg, _CPU_FAMILY_MODEL.get(info.family, {}))
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
    apply_overrides(cfg, parse_overrides(overrides or []))
    for key, value in flags.items():
        if value is not None:
            _set_path(cfg, key, value)
    return cfg


def resolve_preset(preset: str, family: str, device: str) -> str:
    """``"auto"``: the task family's (paper) preset when training runs on a CUDA GPU, else ``"cpu"``.

    The paper's presets (width 256, batches of 2000 transitions, millions of steps) take weeks on
    a CPU; the cpu variant keeps the family's task settings at a size a laptop trains in minutes
    to hours. Any other name is returned unchanged.
    """
    if preset != "auto":
        return preset
    import torch

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return family if cuda else "cpu"


def auto_preset_note(env: str) -> str:
    """The line that says ``--preset auto`` picked the cpu variant, and how to get the paper's preset."""
    from resel_train.envs import task_info

    family = task_info(env).family
    size = f"width {CPU_PRESET['model']['hidden']}, batch {CPU_PRESET['algo']['batch_size']}"
    return (f"no CUDA GPU: --preset auto uses the cpu variant of the {family} preset ({size}); "
            f"for the paper's exact preset pass --preset {family}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["algo.batch_size=500", ...]`` (the CLI's ``--set``) as ``{"algo.batch_size": 500}``, values read as YAML."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value, e.g. algo.batch_size=500")
        values[key.strip()] = yaml.safe_load(value)
    return values


def apply_overrides(cfg: TrainConfig, values: dict[str, Any]) -> None:
    """Set config keys given dotted (``{"algo.batch_size": 500}``) or as section dicts (``{"algo": {...}}``).

    Values are converted to each field's type; an unknown key or a wrong type raises ValueError naming the key.
    """
    _apply(cfg, values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config (nested tables for ``model`` and ``algo``); errors name the file."""
    path = Path(path)
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"config file {path} must end in .toml, .yaml or .yml")
    if path.is_dir():
        raise ValueError(f"config file {path} is a directory; pass a .toml or .yaml file")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "YAML"
        raise ValueError(f"config file {path} is not valid {kind}: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a table of keys, got a {type(data).__name__}")
    return data


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    cfg = TrainConfig()
    _apply(cfg, data)
    return cfg


def flat_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of a nested config dict, e.g. ``["seed", "algo.batch_size"]``."""
    keys = []
    for key, value in data.items():
        keys += flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def get_path(cfg: Any, path: str) -> Any:
    owner = _field_owner(cfg, path)
    return getattr(owner, path.rsplit(".", 1)[-1])


# Keys a resume may change: a larger step budget and settings that do not alter the learning.
RESUME_SAFE = ("steps", "threads", "log_every", "checkpoint_every", "out")


def resume_config(stored: TrainConfig, requested: TrainConfig, keys: list[str] | None = None) -> TrainConfig:
    """The stored config of a run, with the requested ``keys`` (default: all) applied where safe.

    A larger ``steps`` extends the run; ``threads``, ``log_every`` and ``checkpoint_every`` may
    change; any other differing key (or a smaller ``steps``) is refused with a message naming it,
    because the run would no longer be the one that was started.
    """
    keys = flat_keys(config_to_dict(requested)) if keys is None else keys
    changed = [k for k in keys if k not in RESUME_SAFE and get_path(requested, k) != get_path(stored, k)]
    if requested.steps < stored.steps and "steps" in keys:
        changed.append("steps")
    if changed:
        detail = ", ".join(f"{k}={get_path(requested, k)!r} (the run has {get_path(stored, k)!r})" for k in changed)
        raise ValueError(f"--resume cannot change {detail}; resume without them, or start a new run "
                         "(another --out or --seed); only a larger --steps and threads, log_every, "
                         "checkpoint_every may change")
    merged = config_from_dict(config_to_dict(stored))
    for k in keys:
        if k in RESUME_SAFE:
            _set_path(merged, k, get_path(requested, k))
    merged.steps = max(stored.steps, requested.steps) if "steps" in keys else stored.steps
    validate_config(merged)
    return merged


_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def validate_config(cfg: TrainConfig) -> None:
    """Raise ValueError naming the first key that is out of range, with what is allowed."""
    from resel_train.envs import task_info
    from resel_train.nets.registry import ENCODER_NAMES  # the one list of encoder names

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise ValueError(f"config key {key!r} = {get_path(cfg, key)!r} is not allowed: {allowed}")

    def finite(x: Any) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x)

    for key in ("steps", "eval_every", "eval_episodes", "checkpoint_every", "log_every",
                "algo.batch_size", "algo.policy_delay", "algo.update_every", "model.n_blocks", "model.d_state",
                "model.d_conv", "model.expand", "model.dt_rank", "model.embed", "model.hidden"):
        need(get_path(cfg, key) >= 1, key, "an integer >= 1")
    for key in ("seed", "warmup_steps", "threads"):
        need(get_path(cfg, key) >= 0, key, "an integer >= 0" + (" (0: torch's default)" if key == "threads" else ""))
    need(cfg.steps >= cfg.warmup_steps, "steps", f"at least warmup_steps={cfg.warmup_steps} (no update would run)")
    need(bool(_DEVICE_RE.fullmatch(cfg.device)), "device", "auto, cpu, cuda or cuda:N")
    need(cfg.model.encoder in ENCODER_NAMES, "model.encoder", ", ".join(ENCODER_NAMES))
    need(cfg.model.n_critics >= 2, "model.n_critics", "an integer >= 2 (a random pair of heads is used)")
    for key in ("algo.policy_lr", "algo.critic_lr", "algo.encoder_lr", "algo.alpha_lr"):
        need(finite(get_path(cfg, key)) and get_path(cfg, key) >= 0, key, "a finite learning rate >= 0")
    need(finite(cfg.algo.gamma) and 0 < cfg.algo.gamma <= 1, "algo.gamma", "0 < gamma <= 1")
    need(finite(cfg.algo.tau) and 0 < cfg.algo.tau <= 1, "algo.tau", "0 < tau <= 1")
    need(finite(cfg.algo.max_log_alpha), "algo.max_log_alpha", "a finite number")
    need(cfg.algo.target_entropy is None or finite(cfg.algo.target_entropy), "algo.target_entropy",
         "a finite number, or null for -act_dim")
    need(cfg.algo.fixed_alpha is None or (finite(cfg.algo.fixed_alpha) and cfg.algo.fixed_alpha >= 0),
         "algo.fixed_alpha", "a finite number >= 0, or null to learn alpha")
    episode = task_info(cfg.env).max_episode_steps
    need(cfg.replay_capacity >= episode, "replay_capacity",
         f"at least one whole episode of {cfg.env} ({episode} transitions)")


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            _apply(_section(obj, path, key), value, f"{path}.")
        else:
            _set_path(obj, key, value, path)


def _section(obj: Any, path: str, name: str) -> Any:
    owner = _field_owner(obj, name, path)
    section = getattr(owner, name)
    if not dataclasses.is_dataclass(section):
        raise ValueError(f"config key {path!r} is a value, not a section; set it as {path} = <value>")
    return section


def _field_owner(obj: Any, path: str, full: str | None = None) -> Any:
    full = full or path
    *parents, name = path.split(".")
    for parent in parents:
        sections = [f.name for f in dataclasses.fields(obj) if dataclasses.is_dataclass(getattr(obj, f.name))]
        if parent not in sections:
            raise ValueError(f"unknown config section {parent!r} in {full!r}; sections: {sections}")
        obj = getattr(obj, parent)
    names = {f.name for f in dataclasses.fields(obj)}
    if name not in names:
        raise ValueError(f"unknown config key {full!r}; valid keys here: {sorted(names)}")
    return obj


_NUMBER = {"int": "an integer", "float": "a number", "bool": "true/false", "str": "a string"}


def _set_path(cfg: Any, path: str, value: Any, full: str | None = None) -> None:
    """Set one field, converting ``value`` to the field's declared type (errors name the key)."""
    full = full or path
    owner = _field_owner(cfg, path, full)
    name = path.rsplit(".", 1)[-1]
    if dataclasses.is_dataclass(getattr(owner, name)):
        raise ValueError(f"config key {full!r} is a section; set its fields, e.g. {full}.<field>=...")
    hint = {f.name: f.type for f in dataclasses.fields(owner)}[name].replace(" ", "")
    optional = hint.endswith("|None")
    kind = hint.removesuffix("|None")
    expects = _NUMBER[kind] + (" or null" if optional else "")
    if value is None:
        if not optional:
            raise ValueError(f"config key {full!r} expects {expects}, got null")
        setattr(owner, name, None)
        return
    if kind == "str":
        if isinstance(value, (dict, list)):
            raise ValueError(f"config key {full!r} expects {expects}, got {value!r}")
        setattr(owner, name, str(value))
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"config key {full!r} expects {expects}, got {value!r}")
        setattr(owner, name, value)
        return
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"config key {full!r} expects {expects}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"config key {full!r} expects {expects}, got {value!r}")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"config key {full!r} expects {expects}, got {value!r}")
        value = int(value)
    setattr(owner, name, float(value) if kind == "float" else value)
