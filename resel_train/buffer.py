"""Whole-trajectory replay buffer with packed, reset-flagged batches.

Storage layout
--------------
A trajectory of ``T`` transitions occupies ``T + 1`` consecutive *slots* of a flat ring:
slot ``t`` (``t = 0..T``) holds the observation ``o_t``; slots ``0..T-1`` also hold the
transition data (``a_t``, ``r_t``, ``terminated_t``), the last slot holds only the final
observation ``o_T`` (action/reward/terminal zero). A trajectory may wrap around the ring end.

Because every trajectory is followed by its final-observation slot, the "next inputs" of the
transition at slot ``i`` of a packed batch row are exactly slot ``i + 1`` of the same row
(:func:`next_view`), so a learner runs every encoder once over the packed rows and obtains the
next-step view by a one-slot shift.

Capacity
--------
``capacity`` counts transitions. The buffer also keeps at most ``max_trajectories``
trajectories (default ``min(capacity, max(10_000, capacity // 10))``, i.e. exact for small
buffers and an average trajectory length >= 10 for the full 1e6 buffer); the slot ring has
``capacity + max_trajectories`` slots, which both limits together guarantee is enough. When a
new trajectory does not fit either limit, the OLDEST WHOLE trajectories are evicted first.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "TrajectoryBuffer", "next_view", "pad_rows_time"]

_MASK64 = (1 << 64) - 1


def next_view(x: Tensor) -> Tensor:
    """Next-step view along the time axis (dim 1): ``out[:, i] = x[:, i + 1]``, last slot zero.

    For a transition slot ``i`` of a :class:`Batch` row, ``next_view(x)[:, i]`` is the value at
    the following slot of the same trajectory (its final-obs slot for the last transition).
    """
    if x.dim() < 2:
        raise ValueError(f"next_view expects a tensor of shape (rows, L, ...), got {tuple(x.shape)}")
    out = torch.zeros_like(x)
    out[:, :-1] = x[:, 1:]
    return out


@dataclass
class Batch:
    """Packed trajectories, all tensors shaped ``(rows, L, ...)``.

    ``obs``/``prev_obs``/``prev_act``/``prev_rew``/``act``/``rew``/``terminated``/``mask`` are
    float32, ``reset`` is bool ``(rows, L)``. Padding slots are all zero (mask 0, reset False).
    """

    obs: Tensor  # (R, L, obs_dim)  o_t
    prev_obs: Tensor  # (R, L, obs_dim)  o_{t-1}; zero at t=0 and in padding
    prev_act: Tensor  # (R, L, act_dim)  a_{t-1}; zero at t=0 and in padding
    prev_rew: Tensor  # (R, L, 1)        r_{t-1}; zero at t=0 and in padding
    act: Tensor  # (R, L, act_dim)  a_t at transition slots, zero elsewhere
    rew: Tensor  # (R, L, 1)        r_t at transition slots, zero elsewhere
    terminated: Tensor  # (R, L, 1)   1.0 where the transition ended in a true terminal
    reset: Tensor  # (R, L) bool      True at slot 0 of every trajectory
    mask: Tensor  # (R, L, 1)        1.0 at transition slots (t < T)

    next_view = staticmethod(next_view)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on ``device``."""
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                        for f in fields(self)})

    def pin_memory(self) -> Batch:
        """A copy in page-locked host memory, so ``to(cuda, non_blocking=True)`` is a true async copy."""
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def padded(self, rows: int, length: int) -> Batch:
        """Zero-padded to ``(rows, length)``: extra slots are padding (mask 0, no reset), so every loss is unchanged.

        Used to give the update a handful of static shapes (CUDA graphs replay one shape each).
        """
        R, L = self.reset.shape
        if rows < R or length < L:
            raise ValueError(f"cannot pad a ({R}, {L}) batch down to ({rows}, {length})")
        return Batch(**{f.name: pad_rows_time(getattr(self, f.name), rows, length) for f in fields(self)})

    @property
    def num_transitions(self) -> int:
        """Transitions in the batch (slots with mask 1; padding and final-observation slots excluded)."""
        return int(self.mask.sum().item())


def pad_rows_time(x: Tensor, rows: int, length: int) -> Tensor:
    """Zero-pad a (rows, L, ...) tensor at the end of its first two axes."""
    pad = [0, 0] * (x.dim() - 2) + [0, length - x.shape[1], 0, rows - x.shape[0]]
    return torch.nn.functional.pad(x, pad)


class TrajectoryBuffer:
    """Replay of whole trajectories; samples are packed along time into rows (see module doc)."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int = 1_000_000, pad: int = 7,
                 seed: int | None = None, *, max_trajectories: int | None = None):
        for name, v in (("obs_dim", obs_dim), ("act_dim", act_dim), ("capacity", capacity)):
            if int(v) != v or int(v) < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if int(pad) != pad or pad < 0:
            raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
        if max_trajectories is None:
            max_trajectories = min(int(capacity), max(10_000, int(capacity) // 10))
        if int(max_trajectories) != max_trajectories or max_trajectories < 1:
            raise ValueError(f"max_trajectories must be a positive integer, got {max_trajectories!r}")
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.capacity = int(capacity)
        self.pad = int(pad)
        self.max_trajectories = int(max_trajectories)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self.version = 0  # counts changes of the stored data (a prefetched sample is valid while it holds)
        self._allocate()

    # ------------------------------------------------------------------ storage
    def _allocate(self) -> None:
        S = self.capacity + self.max_trajectories
        self._num_slots = S
        # np.zeros is lazily backed by the OS: untouched pages of a large buffer cost nothing.
        self._obs = np.zeros((S, self.obs_dim), np.float32)
        self._act = np.zeros((S, self.act_dim), np.float32)
        self._rew = np.zeros((S,), np.float32)
        self._term = np.zeros((S,), np.float32)
        M = self.max_trajectories
        self._traj_start = np.zeros((M,), np.int64)  # first slot of each trajectory (ring over M)
        self._traj_len = np.zeros((M,), np.int64)  # T (transitions) of each trajectory
        self._head = 0  # ring index of the oldest trajectory
        self._n_traj = 0
        self._n_trans = 0
        self._write = 0  # next free slot

    def __len__(self) -> int:
        return self._n_trans

    @property
    def num_trajectories(self) -> int:
        """Whole trajectories stored."""
        return self._n_traj

    @property
    def rng_state(self) -> dict:
        """The sampling generator's state (to redraw a sample with the same random stream)."""
        return self._rng.bit_generator.state

    @rng_state.setter
    def rng_state(self, state: dict) -> None:
        """Rewind the sampling generator, so the next sample repeats a stream drawn before."""
        self._rng.bit_generator.state = state

    @property
    def num_slots(self) -> int:
        """Size of the slot ring (``capacity + max_trajectories``)."""
        return self._num_slots

    def _evict_oldest(self) -> None:
        T = int(self._traj_len[self._head])
        self._n_trans -= T
        self._n_traj -= 1
        self._head = (self._head + 1) % self.max_trajectories
        if self._n_traj == 0:
            self._write = 0

    def add_trajectory(self, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, terminated: bool) -> None:
        """Store one trajectory.

        obs: (T+1, obs_dim) including the final observation; act: (T, act_dim); rew: (T,) or
        (T, 1); terminated: whether the LAST transition was a true terminal (time-limit
        truncation is not). Raises ValueError on bad shapes/dtypes/non-finite values.
        """
        obs = self._check_array("obs", obs)
        act = self._check_array("act", act)
        rew = self._check_array("rew", rew)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (T+1, {self.obs_dim}), got {obs.shape}")
        T = obs.shape[0] - 1
        if T < 1:
            raise ValueError(f"a trajectory needs at least one transition (obs has {obs.shape[0]} rows)")
        if act.shape != (T, self.act_dim):
            raise ValueError(f"act must have shape (T={T}, {self.act_dim}) to match obs {obs.shape}, "
                             f"got {act.shape}")
        if rew.shape == (T, 1):
            rew = rew[:, 0]
        if rew.shape != (T,):
            raise ValueError(f"rew must have shape (T={T},) to match obs {obs.shape}, got {rew.shape}")
        is_flag = isinstance(terminated, (bool, np.bool_)) or (
            isinstance(terminated, (int, np.integer)) and int(terminated) in (0, 1))
        if is_flag:
            terminated = bool(terminated)
        else:
            raise ValueError(f"terminated must be a bool, got {terminated!r}")
        if T > self.capacity:
            raise ValueError(f"trajectory of {T} transitions exceeds the buffer capacity {self.capacity}")

        while self._n_traj > 0 and (self._n_trans + T > self.capacity
                                    or self._n_traj + 1 > self.max_trajectories):
            self._evict_oldest()

        S = self._num_slots
        start = self._write
        idx = (start + np.arange(T + 1)) % S if start + T + 1 > S else slice(start, start + T + 1)
        self._obs[idx] = obs
        a = np.zeros((T + 1, self.act_dim), np.float32)
        a[:T] = act
        r = np.zeros((T + 1,), np.float32)
        r[:T] = rew
        d = np.zeros((T + 1,), np.float32)
        d[T - 1] = 1.0 if terminated else 0.0
        self._act[idx] = a
        self._rew[idx] = r
        self._term[idx] = d

        k = (self._head + self._n_traj) % self.max_trajectories
        self._traj_start[k] = start
        self._traj_len[k] = T
        self._n_traj += 1
        self._n_trans += T
        self._write = (start + T + 1) % S
        self.version += 1

    @staticmethod
    def _check_array(name: str, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
                                     or x.dtype == np.bool_):
            raise ValueError(f"{name} must be a real numeric array, got dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
        return x

    # ------------------------------------------------------------------ sampling
    def _draw(self, batch_size: int) -> np.ndarray:
        """Ring indices of trajectories drawn uniformly without replacement (a fresh random
        order once all are used) until their total transitions reach ``batch_size``."""
        n, total, M = self._n_traj, self._n_trans, self.max_trajectories
        rng = self._rng
        parts = []
        remaining = batch_size
        while remaining > total:  # fewer stored transitions than requested: use every trajectory
            parts.append(rng.permutation(n))
            remaining -= total
        def lens_of(i):
            return self._traj_len[(self._head + i) % M]

        k = min(n, max(4, int(2 * remaining * n / total) + 4))
        while True:
            pick = rng.choice(n, size=k, replace=False) if k < n else rng.permutation(n)
            cs = np.cumsum(lens_of(pick))
            j = int(np.searchsorted(cs, remaining, side="left"))  # first prefix reaching `remaining`
            if j < k:
                parts.append(pick[: j + 1])
                break
            k = min(n, 2 * k)  # cannot fail once k == n since remaining <= total
        return (self._head + np.concatenate(parts)) % M

    def sample(self, batch_size: int) -> Batch:
        """Draw whole trajectories until they hold >= ``batch_size`` transitions and pack them.

        Rows have length ``L = max(T) + 1 + pad``; each trajectory takes ``T + 1`` slots followed
        by at least ``pad`` zero slots, placed by first-fit-decreasing bin packing.
        """
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if self._n_traj == 0:
            raise ValueError("cannot sample from an empty TrajectoryBuffer")
        ring = self._draw(int(batch_size))
        lens = self._traj_len[ring]  # T per drawn trajectory
        starts = self._traj_start[ring]
        k = len(ring)

        # --- packing plan: first-fit decreasing, items of size T + 1 + pad into rows of length L
        size = lens + 1 + self.pad
        L = int(size.max())
        order = np.argsort(-size, kind="stable")
        row = np.empty(k, np.int64)
        col = np.empty(k, np.int64)
        free: list[int] = []  # remaining room per row
        for i, s in zip(order.tolist(), size[order].tolist()):
            for r, room in enumerate(free):  # noqa: B007  (r is the chosen row after the loop)
                if room >= s:
                    break
            else:
                r = len(free)
                free.append(L)
            row[i] = r
            col[i] = L - free[r]
            free[r] -= s
        R = len(free)

        # --- vectorised gather of every occupied slot
        nslot = lens + 1
        n_all = int(nslot.sum())
        tid = np.repeat(np.arange(k), nslot)
        first = np.cumsum(nslot) - nslot
        t = np.arange(n_all) - first[tid]
        src = (starts[tid] + t) % self._num_slots
        dst = row[tid] * L + col[tid] + t  # flat (row, slot) index

        RL = R * L
        obs = np.zeros((RL, self.obs_dim), np.float32)
        act = np.zeros((RL, self.act_dim), np.float32)
        rew = np.zeros((RL,), np.float32)
        term = np.zeros((RL,), np.float32)
        reset = np.zeros((RL,), np.bool_)
        mask = np.zeros((RL,), np.float32)
        has_prev = np.zeros((RL,), np.bool_)
        obs[dst] = self._obs[src]
        act[dst] = self._act[src]
        rew[dst] = self._rew[src]
        term[dst] = self._term[src]
        reset[dst] = t == 0
        mask[dst] = t < lens[tid]
        has_prev[dst] = t > 0

        # previous-step inputs: shift by one slot inside the row, zero at t=0 and in padding
        obs = obs.reshape(R, L, self.obs_dim)
        act = act.reshape(R, L, self.act_dim)
        rew = rew.reshape(R, L, 1)
        hp = has_prev.reshape(R, L, 1)
        prev_obs = np.zeros_like(obs)
        prev_act = np.zeros_like(act)
        prev_rew = np.zeros_like(rew)
        np.multiply(obs[:, :-1], hp[:, 1:], out=prev_obs[:, 1:])
        np.multiply(act[:, :-1], hp[:, 1:], out=prev_act[:, 1:])
        np.multiply(rew[:, :-1], hp[:, 1:], out=prev_rew[:, 1:])

        f = torch.from_numpy
        return Batch(obs=f(obs), prev_obs=f(prev_obs), prev_act=f(prev_act), prev_rew=f(prev_rew),
                     act=f(act), rew=f(rew), terminated=f(term.reshape(R, L, 1)),
                     reset=f(reset.reshape(R, L)), mask=f(mask.reshape(R, L, 1)))

    # ------------------------------------------------------------------ checkpointing
    def _logical_slots(self) -> tuple[np.ndarray, np.ndarray]:
        ring = (self._head + np.arange(self._n_traj)) % self.max_trajectories
        lens = self._traj_len[ring]
        nslot = lens + 1
        first = np.cumsum(nslot) - nslot
        tid = np.repeat(np.arange(len(ring)), nslot)
        t = np.arange(int(nslot.sum())) - first[tid]
        return (self._traj_start[ring][tid] + t) % self._num_slots, lens

    def state_dict(self) -> dict:
        """Stored data (oldest trajectory first, compacted), config and RNG state.

        Only numpy arrays and Python ints, so ``np.savez(f, **sd)`` / ``np.load(f, allow_pickle=False)``
        round-trips it (0-d arrays are accepted back as ints). Note ``torch.load(weights_only=True)``
        rejects numpy arrays: convert with ``torch.from_numpy`` first if it goes into a torch checkpoint
        (``load_state_dict`` accepts tensors too).
        """
        src, lens = self._logical_slots()
        st = self._rng.bit_generator.state
        s, inc = int(st["state"]["state"]), int(st["state"]["inc"])
        rng_state = np.array([s >> 64, s & _MASK64, inc >> 64, inc & _MASK64,
                              int(st["has_uint32"]), int(st["uinteger"])], dtype=np.uint64)
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "capacity": self.capacity,
            "pad": self.pad,
            "max_trajectories": self.max_trajectories,
            "traj_len": lens.astype(np.int64),
            "obs": self._obs[src].copy(),
            "act": self._act[src].copy(),
            "rew": self._rew[src].copy(),
            "terminated": self._term[src].copy(),
            "rng_state": rng_state,
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore from :meth:`state_dict` (adopts its capacity/pad/max_trajectories and RNG)."""
        if int(d["obs_dim"]) != self.obs_dim or int(d["act_dim"]) != self.act_dim:
            raise ValueError(f"state_dict is for obs_dim={int(d['obs_dim'])}, act_dim={int(d['act_dim'])}; "
                             f"this buffer has obs_dim={self.obs_dim}, act_dim={self.act_dim}")
        lens = np.asarray(d["traj_len"], np.int64).reshape(-1)
        n_slots = int((lens + 1).sum())
        obs, act = np.asarray(d["obs"], np.float32), np.asarray(d["act"], np.float32)
        rew, term = np.asarray(d["rew"], np.float32), np.asarray(d["terminated"], np.float32)
        if (obs.shape != (n_slots, self.obs_dim) or act.shape != (n_slots, self.act_dim)
                or rew.shape != (n_slots,) or term.shape != (n_slots,)):
            raise ValueError("state_dict arrays do not match its trajectory lengths")
        capacity, max_traj = int(d["capacity"]), int(d["max_trajectories"])
        if int(lens.sum()) > capacity or len(lens) > max_traj or (len(lens) and lens.min() < 1):
            raise ValueError("state_dict holds more data than its capacity allows")
        self.capacity, self.max_trajectories, self.pad = capacity, max_traj, int(d["pad"])
        self._allocate()
        self._obs[:n_slots], self._act[:n_slots] = obs, act
        self._rew[:n_slots], self._term[:n_slots] = rew, term
        n = len(lens)
        self._traj_len[:n] = lens
        self._traj_start[:n] = np.cumsum(lens + 1) - (lens + 1)
        self._n_traj, self._n_trans = n, int(lens.sum())
        self._write = n_slots % self._num_slots
        self.version += 1
        if "rng_state" in d:
            r = [int(v) for v in np.asarray(d["rng_state"], np.uint64).tolist()]
            self._rng.bit_generator.state = {
                "bit_generator": "PCG64",
                "state": {"state": (r[0] << 64) | r[1], "inc": (r[2] << 64) | r[3]},
                "has_uint32": r[4], "uinteger": r[5],
            }
