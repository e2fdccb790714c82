"""Typed training configuration, per-family presets and overrides from files and the CLI.

Resolution order: preset for the task family -> per-task overrides -> config file -> ``--set``
overrides -> explicit CLI flags (see :func:`resolve_config`). The resolved config is saved next to
every checkpoint. Each field's one line of help is :data:`FIELD_HELP`, shown by ``resel config show``
and in docs/config.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import yaml

from resel_train.nets.registry import ENCODER_NAMES, ENCODERS, MambaConfig, S5Config, encoder_spec


@dataclass
class ModelConfig:
    encoder: str = "mamba"  # a name of the encoder registry (resel_train/nets/registry.py)
    embed: int = 128
    hidden: int = 256
    n_critics: int = 8
    input_layers: int = 1  # layers of the MLP before the memory core (Key-to-Door: 3)
    # each encoder's own section (the registry's), read only when it is the encoder
    mamba: MambaConfig = field(default_factory=MambaConfig)
    s5: S5Config = field(default_factory=S5Config)

    def encoder_kwargs(self) -> dict[str, int]:
        """The encoder's constructor arguments: the keys its registry entry reads, and input_layers."""
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
class LoggerConfig:
    wandb: bool = False  # also log every row to Weights & Biases (the wandb extra)
    wandb_project: str = "resel"


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
    logger: LoggerConfig = field(default_factory=LoggerConfig)


# One line of help per config field (dotted key): `resel config show` and docs/config.md print it.
FIELD_HELP: dict[str, str] = {
    "env": "Task id (see `resel envs`); set by --env / RESeL(env_id).",
    "preset": "Preset the config started from: a task family's paper preset, or cpu (auto picks one).",
    "seed": "Random seed of the networks, the replay sampling and the environments.",
    "steps": "The run's total environment steps (a resume may raise it).",
    "warmup_steps": "Random-action steps before the first update.",
    "eval_every": "Evaluate the deterministic policy every this many environment steps.",
    "eval_episodes": "Episodes per evaluation, on the held-out (test) tasks.",
    "checkpoint_every": "Save checkpoint.pt (and its replay file) every this many environment steps.",
    "log_every": "Write a metrics.csv / TensorBoard row every this many environment steps.",
    "replay_capacity": "Transitions the replay buffer holds (whole episodes; the oldest go first).",
    "device": "Where training runs: auto (CUDA if present), cpu, cuda or cuda:N.",
    "threads": "torch CPU threads; 0 keeps torch's default.",
    "cuda_graphs": "On CUDA, replay each update as a captured CUDA graph (same numbers, less launch overhead).",
    "out": "Parent folder of the run folder <out>/<env>_<encoder>_s<seed>/.",
    "model.encoder": "Context encoder: mamba, gru, lstm, s5, or mlp (no memory).",
    "model.embed": "Width of the context embedding the encoder hands to the policy or critic.",
    "model.hidden": "Width of the hidden layers (encoder MLP and core, policy and critic heads).",
    "model.n_critics": "Critic heads in the ensemble (REDQ: targets use a random pair).",
    "model.input_layers": "Layers of the MLP in front of the memory core.",
    "algo.policy_lr": "Adam learning rate of the policy's MLP layers.",
    "algo.critic_lr": "Adam learning rate of the critic's MLP layers.",
    "algo.encoder_lr": "Adam learning rate of both context encoders (kept small for stable training).",
    "algo.alpha_lr": "Adam learning rate of the entropy temperature alpha.",
    "algo.gamma": "Discount factor.",
    "algo.tau": "Polyak rate of the target critic.",
    "algo.batch_size": "Transitions per update (drawn as whole sequences, padded and masked).",
    "algo.policy_delay": "Update the policy and alpha every this many critic updates.",
    "algo.update_every": "Environment steps per critic update (1: one update per step).",
    "algo.target_entropy": "Entropy target of alpha's update; null: -act_dim.",
    "algo.max_log_alpha": "Upper bound of log(alpha).",
    "algo.fixed_alpha": "A fixed entropy temperature instead of a learned one (discrete tasks: 0.2); null: learned.",
    "logger.wandb": "Also log every metrics row to Weights & Biases (needs the wandb extra; WANDB_MODE=offline works).",
    "logger.wandb_project": "The Weights & Biases project the run is logged to.",
}

PRESET_HELP: dict[str, str] = {
    "auto": "the task family's paper preset when training on a CUDA GPU, its cpu variant without one",
    "mujoco": "MuJoCo locomotion with the full state (HalfCheetah, Hopper, Walker2d, Ant, Humanoid): 5M steps",
    "pybullet": "PyBullet locomotion POMDPs (-P positions, -V velocities only): 1.5M steps, larger rates",
    "gravity": "MuJoCo dynamics generalization (changed gravity): 2M steps, batch 1000",
    "meta": "meta-RL tasks that feed the previous reward to the policy (AntDir, Wind, ...): batch 1000",
    "classic": "Pendulum and CartPole, full state or -P/-V POMDPs: 100k steps",
    "keydoor": "Key-to-Door credit assignment: 3-layer input MLP, no short conv, fixed alpha 0.2",
    "cpu": "the task family's preset at a 2-core size: width 64, d_state 16, batch 256, larger learning rates",
}


# Learning rates, batch and step budget by task family; "classic" (small POMDPs) borrows
# the PyBullet-POMDP rates. "cpu" is a 2-core-friendly preset: docs/config.md lists what it changes.
_FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    "mujoco": {"steps": 5_000_000, "algo": dict(policy_lr=6e-5, critic_lr=2e-4, encoder_lr=2e-6, batch_size=2000)},
    "pybullet": {"steps": 1_500_000, "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, batch_size=2000)},
    "gravity": {"steps": 2_000_000, "algo": dict(policy_lr=6e-5, critic_lr=2e-4, encoder_lr=2e-6, batch_size=1000)},
    "meta": {"steps": 5_000_000, "algo": dict(policy_lr=6e-5, critic_lr=2e-4, encoder_lr=2e-6, batch_size=1000)},
    "classic": {"steps": 100_000, "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, batch_size=2000)},
    # the paper's Key-to-Door model: a 3-layer input MLP and no short conv (d_conv 1); batch 1000 (its Table 2)
    "keydoor": {"steps": 1_000_000, "model": dict(input_layers=3, mamba=dict(d_conv=1)),
                "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, batch_size=1000, fixed_alpha=0.2)},
}
CPU_PRESET: dict[str, Any] = {
    "warmup_steps": 1000,
    "eval_every": 2000,
    "model": dict(embed=64, hidden=64, mamba=dict(d_state=16, d_conv=4, dt_rank=4), s5=dict(d_state=16)),
    "algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=3e-4, alpha_lr=3e-4, batch_size=256, update_every=2),
}
# what "cpu" keeps of a family's own model (Key-to-Door: still no short conv)
_CPU_FAMILY_MODEL: dict[str, dict[str, Any]] = {"keydoor": {"model": dict(mamba=dict(d_conv=1))}}
PRESETS = (*_FAMILY_PRESETS, "cpu")

# Per-task overrides from the authors' configs.
_TASK_OVERRIDES: dict[str, dict[str, Any]] = {
    "HalfCheetah": {"algo": dict(policy_lr=3e-4, critic_lr=1e-3, encoder_lr=1e-5, alpha_lr=5e-4)},
    "AntBLT-V": {"algo": dict(batch_size=128, policy_lr=5e-4, critic_lr=5e-4)},
    "WalkerBLT-P": {"algo": dict(encoder_lr=5e-6)},
    "Hopper": {"algo": dict(target_entropy=0.0)},
    "Hopper-gravity": {"algo": dict(target_entropy=0.0)},
    # the paper's longest distractor: four Mamba blocks (and four S5 layers)
    "KeyToDoor-500": {"model": dict(mamba=dict(n_blocks=4), s5=dict(n_layers=4))},
}


# Config keys that are also CLI flags / RESeL() arguments. In a config file or --set they take part in the
# same order as every other key (file -> --set -> flag); ``env`` must agree with the task asked for.
ARGUMENT_KEYS = ("env", "preset", "seed", "out", "device")


def resolve_config(
    env: str,
    preset: str = "auto",
    config_file: str | Path | None = None,
    overrides: list[str] | Mapping[str, Any] | None = None,
    **flags: Any,
) -> TrainConfig:
    """Build the full config for ``env``; ``flags`` with value None are ignored (unset CLI options).

    The order, later wins: the preset -> per-task overrides -> the config file -> ``overrides``
    (``--set``: ``key=value`` strings or a mapping) -> ``flags``. The preset itself is the last
    one named among the file, ``overrides`` and ``preset`` (``"auto"`` names none), so a preset in a
    file or ``--set preset=cpu`` is applied, not just recorded. An ``env`` key must agree with
    ``env``. Types are checked here; ranges by :func:`validate_config`, which the trainer runs on
    the config it will use (on a resume: the run's stored config with the requested changes).
    """
    from resel_train.envs import task_info

    info = task_info(env)
    stages: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        stages.append((f"config file {config_file}", load_config_file(config_file)))
    values = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    stages.append(("--set (overrides)", values))
    named = [("--preset (RESeL's preset=)", preset)] + [(where, data["preset"]) for where, data in reversed(stages)
                                              if "preset" in data]
    for where, data in stages:
        if "env" in data and data["env"] != env:
            raise ValueError(f"config key 'env' = {data['env']!r} in {where} disagrees with the task {env!r} given "
                             "by --env (RESeL's env_id); drop one of the two")
    for where, value in named:
        if not isinstance(value, str):
            raise ValueError(f"config key 'preset' in {where} must be a preset name, got {value!r}; "
                             f"choose 'auto' or one of {PRESETS}")
    source, chosen = next(((w, v) for w, v in named if v != "auto"), ("--preset", "auto"))
    device = flags.get("device") or next((d["device"] for _, d in reversed(stages) if d.get("device")), "auto")
    family = resolve_preset(chosen, info.family, str(device))
    if family not in PRESETS:
        raise ValueError(f"unknown preset {chosen!r} (from {source}); choose 'auto' or one of {PRESETS}")
    cfg = preset_config(family, info.family)
    cfg.env = env
    if family != "cpu":
        _apply(cfg, _TASK_OVERRIDES.get(env, {}))
    elif env in ("Hopper", "Hopper-gravity"):
        cfg.algo.target_entropy = 0.0
    if info.discrete:
        cfg.algo.fixed_alpha = 0.2
    for _, data in stages:
        _apply(cfg, {k: v for k, v in data.items() if k not in ("env", "preset")})
    for key, value in flags.items():
        if value is not None:
            _set_path(cfg, key, value)
    return cfg


def preset_config(preset: str, family: str) -> TrainConfig:
    """The config a preset gives a task of ``family`` before per-task settings (``"cpu"``: the family's
    preset made 2-core sized); the one place presets are applied (``resolve_config``, docs/config.md)."""
    cfg = TrainConfig()
    if preset == "cpu":
        _apply(cfg, _FAMILY_PRESETS[family])
        _apply(cfg, CPU_PRESET)
        _apply(cfg, _CPU_FAMILY_MODEL.get(family, {}))
    else:
        _apply(cfg, _FAMILY_PRESETS[preset])
    cfg.preset = preset
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
        values[key.strip()] = _load_yaml(value, f"--set {item!r}")
    return values


def apply_overrides(cfg: TrainConfig, values: dict[str, Any]) -> None:
    """Set config keys given dotted (``{"algo.batch_size": 500}``) or as section dicts (``{"algo": {...}}``).

    Values are converted to each field's type; an unknown key or a wrong type raises ValueError naming the key.
    """
    _apply(cfg, values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config (nested tables for ``model`` and ``algo``); errors name the file.

    A key given twice is refused (TOML refuses it by itself; YAML would silently keep the last one).
    """
    path = Path(path)
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"config file {path} must end in .toml, .yaml or .yml")
    if path.is_dir():
        raise ValueError(f"config file {path} is a directory; pass a .toml or .yaml file")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path} is not valid TOML: {' '.join(str(exc).split())}") from None
        except RecursionError:
            raise ValueError(f"config file {path} is nested too deeply to read; a config nests three levels at most "
                             "(model.mamba.d_state)") from None
    else:
        data = _load_yaml(text, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a table of keys, got a {type(data).__name__}")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (line {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _load_yaml(text: str, where: str) -> Any:
    """YAML ``text`` with duplicate keys refused; every error is one ValueError naming ``where``."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to read; a config nests three levels at most "
                         "(model.mamba.d_state)") from None


def field_rows(cfg: TrainConfig) -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, value in ``cfg``, one line of help) for every field, in declaration order."""
    rows = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                key = f"{prefix}{f.name}"
                rows.append((key, str(f.type).replace(" ", ""), value, f.metadata.get("help") or FIELD_HELP[key]))

    walk(cfg, "")
    return rows


def preset_lines() -> list[str]:
    """``name: what it is`` for ``auto`` and every preset (``resel train --help``, docs)."""
    return [f"{name}: {PRESET_HELP[name]}" for name in ("auto", *PRESETS)]


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as nested plain dicts: what config.yaml and a checkpoint store."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A config from a stored dict (a run's config.yaml or a checkpoint's), upgrading the old flat model keys."""
    cfg = TrainConfig()
    _apply(cfg, _upgrade_flat_model_keys(data))
    return cfg


# The encoder settings that were flat ``model.*`` keys before each encoder had its own section; a stored
# config with them still loads (each moves to every section that reads it), a requested one is refused by name.
MOVED_MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "n_blocks": ("mamba.n_blocks", "s5.n_layers"), "d_state": ("mamba.d_state", "s5.d_state"),
    "d_conv": ("mamba.d_conv",), "expand": ("mamba.expand",), "dt_rank": ("mamba.dt_rank",),
}


def _upgrade_flat_model_keys(data: dict[str, Any]) -> dict[str, Any]:
    model = data.get("model")
    if not isinstance(model, dict) or not any(key in model for key in MOVED_MODEL_KEYS):
        return data
    model = {k: (dict(v) if isinstance(v, dict) else v) for k, v in model.items()}
    for old, new_keys in MOVED_MODEL_KEYS.items():
        if old in model:
            value = model.pop(old)
            for new in new_keys:
                section, name = new.split(".")
                model.setdefault(section, {})[name] = value
    return {**data, "model": model}


def flat_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of a nested config dict, e.g. ``["seed", "algo.batch_size"]``."""
    keys = []
    for key, value in data.items():
        keys += flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def get_path(cfg: Any, path: str) -> Any:
    """The value of a dotted key (``"algo.batch_size"``); an unknown key raises ValueError naming it."""
    owner = _field_owner(cfg, path)
    return getattr(owner, path.rsplit(".", 1)[-1])


# Keys a resume may change: a larger step budget and settings that do not alter the learning.
RESUME_SAFE = ("steps", "threads", "log_every", "checkpoint_every", "out", "logger.wandb", "logger.wandb_project")


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

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise ValueError(f"config key {key!r} = {get_path(cfg, key)!r} is not allowed: {allowed}")

    def finite(x: Any) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x)

    for key in ("steps", "eval_every", "eval_episodes", "checkpoint_every", "log_every",
                "algo.batch_size", "algo.policy_delay", "algo.update_every", "model.embed", "model.hidden",
                *(key for spec in ENCODERS.values() for key in spec.config_keys() if key != "model.input_layers")):
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
    if cfg.logger.wandb and importlib.util.find_spec("wandb") is None:  # refused before the run folder exists
        from resel_deploy.extras import install_hint

        raise ImportError(f"logger.wandb=true needs wandb: {install_hint('wandb')}")


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
        moved = MOVED_MODEL_KEYS.get(name) if isinstance(obj, ModelConfig) else None
        if moved:
            raise ValueError(f"config key {full!r} is now in the encoder's own section: set "
                             + " or ".join(f"model.{key}" for key in moved))
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


def run_dir_for(cfg: TrainConfig) -> Path:
    """The run folder a config trains in: ``<out>/<env>_<encoder>_s<seed>``."""
    return Path(cfg.out) / f"{cfg.env}_{cfg.model.encoder}_s{cfg.seed}"
