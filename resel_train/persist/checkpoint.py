"""Checkpoints: written atomically, checksummed, loaded without executing pickled code.

Layout of one file (a plain dict of tensors, numbers, strings, lists and dicts):
    format: "resel-checkpoint", version: int, checksum: "sha256:<hex>" over everything else
    model: {obs_dim, act_dim, reward_as_input, encoder, encoder_kwargs, embed, hidden,
            action_low, action_high, task_id, discrete}  -- everything needed to rebuild the policy
    policy: state_dict                               -- what deployment needs
    config, counters: {env_steps, episodes, wall_s}  -- the run's config and progress
    learner, collector, trainer, replay_file         -- training only, one section per component
                                                        (see layout.py; versions 1-2 were flat)

A run folder holds one *unit*: ``checkpoint.pt`` plus the replay file it names in ``replay_file``
(``replay-<step>.pt``, with the same step and the replay's checksum). :func:`save_run_state`
writes the new replay file completely first, then replaces ``checkpoint.pt`` with one rename
(the commit), and only then deletes the previous replay file: a crash at any moment leaves
either the old unit or the new one, both complete.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from resel_train.action_space import space_from_meta
from resel_train.nets.policy import Policy
from resel_train.persist.atomic import atomic_write, fsync_dir, remove_temp_files
from resel_train.persist.crashpoint import crash_point
from resel_train.persist.layout import weight_sections

FORMAT = "resel-checkpoint"
VERSION = 3  # 3: a section per training component; 2: checksummed, replay in replay-<step>.pt; 1: replay.pt
READABLE_VERSIONS = (1, 2, 3)
CHECKPOINT = "checkpoint.pt"
LEGACY_REPLAY = "replay.pt"
_HEADER = ("format", "version", "checksum")


class CheckpointError(ValueError):
    """A file that is not a readable, intact RESeL checkpoint of a supported version."""


def payload_checksum(payload: dict[str, Any]) -> str:
    """sha256 over every key and value (tensor bytes, dtypes and shapes included), independent of key order."""
    h = hashlib.sha256()
    _digest(h, {k: v for k, v in payload.items() if k not in _HEADER})
    return "sha256:" + h.hexdigest()


def _digest(h: Any, x: Any) -> None:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(x.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(x, dict):
        h.update(f"D{len(x)}:".encode())
        for key in sorted(x, key=repr):
            h.update(repr(key).encode())
            _digest(h, x[key])
    elif isinstance(x, (list, tuple)):
        h.update(f"{type(x).__name__}{len(x)}:".encode())
        for item in x:
            _digest(h, item)
    else:
        h.update(f"{type(x).__name__}:{x!r};".encode())


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> str:
    """Write atomically (temp file, fsync, rename) with a payload checksum; returns the checksum."""
    checksum = payload_checksum(payload)
    data = {"format": FORMAT, "version": VERSION, "checksum": checksum, **payload}
    atomic_write(path, lambda f: torch.save(data, f))
    return checksum


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` (no code runs), check format, version and checksum."""
    path = Path(path)
    if path.is_dir():
        hint = f"; did you mean {path / CHECKPOINT}?" if (path / CHECKPOINT).is_file() else ""
        raise CheckpointError(f"{path} is a directory, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint; use one saved by `resel train`")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, corrupt, or holding pickled objects
        raise CheckpointError(
            f"{path} is not a readable RESeL checkpoint ({_first_line(exc)}); "
            "it may be truncated or written by another tool - use a checkpoint saved by `resel train`"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a RESeL checkpoint (no '{FORMAT}' marker); use one saved by `resel train`")
    if data.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint version {data.get('version')}, this toolkit reads versions {READABLE_VERSIONS}; "
            "use the toolkit version that wrote it"
        )
    if data["version"] >= 2 and data.get("checksum") != payload_checksum(data):
        raise CheckpointError(f"{path} failed its checksum: its contents were corrupted after it was written")
    return data


def nonfinite_weights(data: dict[str, Any]) -> list[str]:
    """Names of the weight tensors (policy, critics, log_alpha) that hold NaN or inf."""
    bad = []
    weights = weight_sections(data)
    for section in ("policy", "critic", "critic_target"):
        for name, t in (weights[section] or {}).items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(f"{section}.{name}")
    alpha = weights["log_alpha"]
    if isinstance(alpha, torch.Tensor) and not bool(torch.isfinite(alpha).all()):
        bad.append("log_alpha")
    return bad


def verify_checkpoint(path: str | Path) -> tuple[dict[str, Any], str]:
    """Load ``path`` (format, checksum) and check that every weight is finite; returns (data, a summary line)."""
    data = load_checkpoint(path)
    bad = nonfinite_weights(data)
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights ({len(bad)} tensors, e.g. {', '.join(bad[:3])}): "
                              "the run diverged before this was saved; do not deploy it")
    weights = weight_sections(data)
    n = sum(len(weights[s] or {}) for s in ("policy", "critic", "critic_target"))
    summed = "checksum ok" if data["version"] >= 2 else f"no checksum (version {data['version']} file)"
    return data, f"verified: {summed}, all {n} weight tensors finite"


# ---- the checkpoint + replay unit of a run folder ----------------------------------------------
def replay_name(step: int) -> str:
    """The replay file of the unit saved at ``step``; the name carries the step, so units never share one."""
    return f"replay-{step:010d}.pt"


def save_run_state(run_dir: Path, checkpoint: dict[str, Any], replay: dict[str, Any], step: int) -> Path:
    """Replace the run folder's unit (see the module docstring); returns the path of checkpoint.pt."""
    name = replay_name(step)
    existed = (run_dir / name).exists()
    replay_sum = save_checkpoint(run_dir / name, {**replay, "env_steps": step})
    try:
        save_checkpoint(run_dir / CHECKPOINT, {**checkpoint, "replay_file": {"name": name, "checksum": replay_sum,
                                                                             "env_steps": step}})
    except Exception:
        if not existed:  # nothing references it: free its space now (a full disk is the usual cause)
            (run_dir / name).unlink(missing_ok=True)
        raise
    crash_point("unit:committed")
    remove_unreferenced(run_dir, keep=name)
    return run_dir / CHECKPOINT


def load_replay(run_dir: Path, saved: dict[str, Any]) -> dict[str, Any]:
    """The replay file that the loaded checkpoint ``saved`` names, checked to be its partner."""
    ref = saved.get("replay_file") or {"name": LEGACY_REPLAY, "checksum": None,
                                       "env_steps": saved["counters"]["env_steps"]}
    path = run_dir / ref["name"]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {run_dir / CHECKPOINT} names it as its replay; "
                              "the run folder was modified by hand")
    replay = load_checkpoint(path)
    if replay["env_steps"] != ref["env_steps"] or (ref["checksum"] and replay.get("checksum") != ref["checksum"]):
        raise CheckpointError(
            f"{path} is from step {replay['env_steps']} but the checkpoint is from step {ref['env_steps']}; "
            "the run folder was modified by hand"
        )
    return replay


def referenced_replay(saved: dict[str, Any]) -> str:
    """The replay file a loaded checkpoint names (checkpoints from before the step in the name: the legacy file)."""
    return (saved.get("replay_file") or {"name": LEGACY_REPLAY})["name"]


def remove_unreferenced(run_dir: Path, keep: str | None) -> list[Path]:
    """Delete temp files of killed writes and every replay file except ``keep``; returns what went."""
    removed = remove_temp_files(run_dir)
    for p in run_dir.glob("replay*.pt"):
        if p.name != keep:
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        fsync_dir(run_dir)
    return removed


def policy_from_checkpoint(data: dict[str, Any]) -> Policy:
    """Rebuild the policy network described by ``data['model']`` and load its weights."""
    spec = data["model"]
    policy = Policy(
        spec["obs_dim"], space_from_meta(spec), spec["reward_as_input"], spec["encoder"], spec["encoder_kwargs"],
        spec["embed"], spec["hidden"],
    )
    policy.load_state_dict(data["policy"])
    return policy
