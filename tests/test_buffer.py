"""Tests for resel_train.buffer against plain-Python references of the stored data.

Every stored observation carries its trajectory id (column 0, ids start at 1 so zero padding is
distinguishable) and its step index t (column 1); the checker reconstructs (trajectory, t) from a
batch and compares every field with the reference trajectories.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from resel_train.buffer import Batch, TrajectoryBuffer, next_view

OBS_DIM, ACT_DIM = 5, 3


def make_traj(uid: int, T: int, rng: np.random.Generator, terminated: bool | None = None):
    obs = rng.standard_normal((T + 1, OBS_DIM)).astype(np.float32)
    obs[:, 0] = uid
    obs[:, 1] = np.arange(T + 1)
    act = rng.uniform(-1, 1, (T, ACT_DIM)).astype(np.float32)
    rew = rng.standard_normal(T).astype(np.float32)
    if terminated is None:
        terminated = bool(rng.random() < 0.5)
    return {"uid": uid, "obs": obs, "act": act, "rew": rew, "terminated": terminated, "T": T}


def add(buf: TrajectoryBuffer, tr: dict) -> None:
    buf.add_trajectory(tr["obs"], tr["act"], tr["rew"], tr["terminated"])


def check_batch(b: Batch, ref: dict[int, dict], pad: int) -> list[int]:
    """Check every packing invariant; return the list of drawn trajectory ids (with repeats)."""
    fields = ["obs", "prev_obs", "prev_act", "prev_rew", "act", "rew", "terminated", "reset", "mask"]
    R, L = b.reset.shape
    for name in fields:
        x = getattr(b, name)
        assert x.shape[:2] == (R, L), name
        assert x.dtype == (torch.bool if name == "reset" else torch.float32), name
    assert b.obs.shape[2] == OBS_DIM and b.prev_obs.shape[2] == OBS_DIM
    assert b.act.shape[2] == ACT_DIM and b.prev_act.shape[2] == ACT_DIM
    for name in ["prev_rew", "rew", "terminated", "mask"]:
        assert getattr(b, name).shape[2] == 1, name

    obs, pobs = b.obs.numpy(), b.prev_obs.numpy()
    act, pact = b.act.numpy(), b.prev_act.numpy()
    rew, prew = b.rew.numpy()[..., 0], b.prev_rew.numpy()[..., 0]
    term, mask, reset = b.terminated.numpy()[..., 0], b.mask.numpy()[..., 0], b.reset.numpy()
    nxt = next_view(b.obs).numpy()
    assert torch.equal(Batch.next_view(b.obs), next_view(b.obs))

    covered = np.zeros((R, L), bool)
    drawn = []
    used = np.zeros(R, int)
    zero_o, zero_a = np.zeros(OBS_DIM, np.float32), np.zeros(ACT_DIM, np.float32)
    for r in range(R):
        starts = [j for j in range(L) if reset[r, j]]
        for n_in_row, j in enumerate(starts):
            uid = int(obs[r, j, 0])
            tr = ref[uid]
            T = tr["T"]
            assert j + T + 1 + pad <= L, "trajectory + pad must fit in the row"
            drawn.append(uid)
            used[r] += T + 1 + pad
            seg = slice(j, j + T + 1)  # the trajectory's T + 1 slots
            tr_ = slice(j, j + T)  # its transition slots
            covered[r, seg] = True
            np.testing.assert_array_equal(obs[r, seg], tr["obs"])
            np.testing.assert_array_equal(reset[r, seg], np.arange(T + 1) == 0)
            np.testing.assert_array_equal(mask[r, seg], (np.arange(T + 1) < T).astype(np.float32))
            np.testing.assert_array_equal(act[r, tr_], tr["act"])
            np.testing.assert_array_equal(rew[r, tr_], tr["rew"])
            exp_term = np.zeros(T + 1, np.float32)
            exp_term[T - 1] = float(tr["terminated"])
            np.testing.assert_array_equal(term[r, seg], exp_term)
            np.testing.assert_array_equal(nxt[r, tr_], tr["obs"][1:])  # next-step view
            # final-obs slot: no action / reward
            assert not act[r, j + T].any() and rew[r, j + T] == 0.0
            # previous-step inputs: zero at t = 0, else the stored previous step
            np.testing.assert_array_equal(pobs[r, seg], np.concatenate([zero_o[None], tr["obs"][:-1]]))
            np.testing.assert_array_equal(pact[r, seg], np.concatenate([zero_a[None], tr["act"]]))
            np.testing.assert_array_equal(prew[r, seg], np.concatenate([[0.0], tr["rew"]]).astype(np.float32))
            # >= pad zero slots before the next trajectory in the row (or the row end)
            end = starts[n_in_row + 1] if n_in_row + 1 < len(starts) else L
            assert end - (j + T + 1) >= pad
    # everything not covered by a trajectory is zero padding
    pad_slots = ~covered
    for name in fields:
        x = getattr(b, name).numpy()
        assert not x[pad_slots].any(), f"{name} nonzero in padding"
    assert b.num_transitions == sum(ref[u]["T"] for u in drawn)
    assert mask.sum() == b.num_transitions
    # first-fit packing: no two rows could be merged into one
    for r1 in range(R):
        for r2 in range(r1 + 1, R):
            assert used[r1] + used[r2] > L
    # row length = longest drawn trajectory's T + 1 + pad
    assert L == max(ref[u]["T"] for u in drawn) + 1 + pad
    return drawn


def expected_stored(history: list[dict], capacity: int, max_traj: int) -> list[int]:
    """Plain reference for eviction: the newest whole trajectories that fit both limits."""
    kept, total = [], 0
    for tr in reversed(history):
        if total + tr["T"] > capacity or len(kept) + 1 > max_traj:
            break
        kept.append(tr["uid"])
        total += tr["T"]
    return kept[::-1]


def stored_uids(buf: TrajectoryBuffer) -> list[int]:
    sd = buf.state_dict()
    firsts = np.cumsum(sd["traj_len"] + 1) - (sd["traj_len"] + 1)
    return [int(v) for v in sd["obs"][firsts, 0]]


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [7, 0, 3])
def test_packing_invariants_random_lengths(pad):
    rng = np.random.default_rng(pad)
    buf = TrajectoryBuffer(OBS_DIM, ACT_DIM, capacity=20_000, pad=pad, seed=1)
    ref = {}
    for uid in range(1, 61):
        tr = make_traj(uid, int(rng.integers(1, 301)), rng)
        ref[uid] = tr
        add(buf, tr)
    assert len(buf) == sum(tr["T"] for tr in ref.values())
    assert buf.num_trajectories == 60
    total = len(buf)
    for bs in [1, 7, 100, 500, 2000, total - 1, total, total + 5, 2 * total + 3]:
        state = buf._rng.bit_generator.state
        # draw order (ring indices -> trajectory ids), then the same draw again through sample()
        ordered = [int(buf._obs[buf._traj_start[i], 0]) for i in buf._draw(bs)]
        buf._rng.bit_generator.state = state
        b = buf.sample(bs)
        drawn = check_batch(b, ref, pad)
        assert sorted(ordered) == sorted(drawn)
        lens = [ref[u]["T"] for u in ordered]
        assert sum(lens) >= bs
        assert sum(lens) - lens[-1] < bs  # dropping the last drawn would fall short
        if bs <= total:
            assert len(set(drawn)) == len(drawn), "no repeats while without replacement is possible"
        else:  # every trajectory is used before any repeats
            assert set(drawn) == set(ref)


def test_draw_is_uniform_over_trajectories():
    rng = np.random.default_rng(0)
    buf = TrajectoryBuffer(OBS_DIM, ACT_DIM, capacity=10_000, seed=3)
    lengths = [1, 5, 50, 300, 20]
    for uid, T in enumerate(lengths, start=1):
        add(buf, make_traj(uid, T, rng))
    counts = np.zeros(len(lengths))
    n = 3000
    for _ in range(n):
        b = buf.sample(1)  # exactly one trajectory
        assert b.reset.sum() == 1
        counts[int(b.obs[b.reset][0, 0]) - 1] += 1
    expected = n / len(lengths)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts


@pytest.mark.parametrize("capacity,max_traj", [(500, None), (500, 12), (64, 64)])
def test_eviction_keeps_newest_whole_trajectories(capacity, max_traj):
    rng = np.random.default_rng(capacity + (max_traj or 0))
    buf = TrajectoryBuffer(OBS_DIM, ACT_DIM, capacity=capacity, pad=7, seed=0, max_trajectories=max_traj)
    mt = buf.max_trajectories
    history, ref = [], {}
    wrapped_seen = 0
    for uid in range(1, 121):
        hi = min(capacity, 120)
        T = int(rng.integers(1, hi + 1)) if uid % 5 else int(rng.integers(1, 4))
        tr = make_traj(uid, T, rng)
        history.append(tr)
        ref[uid] = tr
        add(buf, tr)
        exp = expected_stored(history, capacity, mt)
        assert stored_uids(buf) == exp
        assert len(buf) == sum(ref[u]["T"] for u in exp) <= capacity
        assert buf.num_trajectories == len(exp) <= mt
        # is the newest trajectory wrapped around the ring end?
        k = (buf._head + buf.num_trajectories - 1) % mt
        if buf._traj_start[k] + buf._traj_len[k] + 1 > buf.num_slots:
            wrapped_seen += 1
            # sample everything: each stored trajectory exactly once, wrapped one included
            b = buf.sample(len(buf))
            drawn = check_batch(b, ref, 7)
            assert sorted(drawn) == sorted(exp)
            assert uid in drawn
    assert wrapped_seen >= 1
    b = buf.sample(len(buf))
    assert sorted(check_batch(b, ref, 7)) == sorted(stored_uids(buf))


def test_wrapped_trajectory_exact_layout():
    rng = np.random.default_rng(5)
    buf = TrajectoryBuffer(OBS_DIM, ACT_DIM, capacity=10, pad=2, seed=0, max_trajectories=2)
    assert buf.num_slots == 12
    a, bb, c = make_traj(1, 6, rng), make_traj(2, 3, rng), make_traj(3, 5, rng, terminated=True)
    for tr in (a, bb, c):
        add(buf, tr)
    # a (7 slots, 0..6) evicted; b at 7..10; c (6 slots) at 11, 0..4 -> wraps
    assert stored_uids(buf) == [2, 3]
    assert buf._traj_start[(buf._head + 1) % 2] == 11
    batch = buf.sample(8)
    assert sorted(check_batch(batch, {2: bb, 3: c}, 2)) == [2, 3]


def test_terminated_only_on_last_transition():
    rng = np.random.default_rng(2)
    buf = TrajectoryBuffer(OBS_DIM, ACT_DIM, capacity=1000, seed=0)
    ref = {}
    for uid, (T, d) in enumerate([(1, True), (1, False), (10, True), (10, False), (37, True)], start=1):
        ref[uid] = make_traj(uid, T, rng, terminated=d)
        add(buf, ref[uid])
    b = buf.sample(len(buf))
    check_batch(b, ref, 7)
    term = b.terminated[..., 0]
    assert int(term.sum()) == 3
    for r, j in torch.nonzero(term).tolist():
        uid = int(b.obs[r, j, 0])
        assert ref[uid]["terminated"] and int(b.obs[r, j, 1]) == ref[uid]["T"] - 1
        assert b.mask[r, j, 0] == 1 and b.mask[r, j + 1, 0] == 0  # next slot is the final obs
    # numpy bools and 0/1 ints accepted
    buf.add_trajectory(*[ref[1][k] for k in ("obs", "act", "rew")], np.bool_(True))
    buf.add_trajectory(*[ref[1][k] for k in ("obs", "act", "rew")], 0)


def test_add_trajectory_validation():
    rng = np.random.default_rng(0)
    buf = TrajectoryBuffer(OBS_DIM, ACT_DIM, capacity=50)
    tr = make_traj(1, 5, rng)
    o, a, r = tr["obs"], tr["act"], tr["rew"]
    with pytest.raises(ValueError, match="obs"):
        buf.add_trajectory(o[:, :4], a, r, False)
    with pytest.raises(ValueError, match="act"):
        buf.add_trajectory(o, a[:4], r, False)
    with pytest.raises(ValueError, match="act"):
        buf.add_trajectory(o, a[:, :2], r, False)
    with pytest.raises(ValueError, match="rew"):
        buf.add_trajectory(o, a, r[:3], False)
    with pytest.raises(ValueError, match="at least one transition"):
        buf.add_trajectory(o[:1], a[:0], r[:0], False)
    bad = o.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        buf.add_trajectory(bad, a, r, False)
    bad_r = r.copy()
    bad_r[0] = np.inf
    with pytest.raises(ValueError, match="rew"):
        buf.add_trajectory(o, a, bad_r, False)
    with pytest.raises(ValueError, match="dtype"):
        buf.add_trajectory(o.astype(object), a, r, False)
    with pytest.raises(ValueError, match="dtype"):
        buf.add_trajectory(o.astype(np.complex64), a, r, False)
    with pytest.raises(ValueError, match="terminated"):
        buf.add_trajectory(o, a, r, "yes")
    big = make_traj(2, 51, rng)
    with pytest.raises(ValueError, match="capacity"):
        add(buf, big)
    assert len(buf) == 0 and buf.num_trajectories == 0
    with pytest.raises(ValueError, match="empty"):
        buf.sample(10)
    buf.add_trajectory(o.astype(np.float64), a.astype(np.float64), r[:, None], True)  # (T,1) rew ok
    assert len(buf) == 5
    with pytest.raises(ValueError):
        buf.sample(0)


def test_state_dict_round_trip_identical_samples():
    rng = np.random.default_rng(9)
    buf = TrajectoryBuffer(OBS_DIM, ACT_DIM, capacity=800, pad=7, seed=4)
    for uid in range(1, 40):  # overfills: evictions and wrap-around
        add(buf, make_traj(uid, int(rng.integers(1, 150)), rng))
    sd = buf.state_dict()
    for k, v in sd.items():
        assert isinstance(v, (np.ndarray, int)), (k, type(v))
        if isinstance(v, np.ndarray):
            assert v.dtype != object
    f = io.BytesIO()
    np.savez(f, **sd)  # no pickled objects needed
    f.seek(0)
    with np.load(f, allow_pickle=False) as z:
        sd2 = {k: z[k] for k in z.files}
    other = TrajectoryBuffer(OBS_DIM, ACT_DIM, capacity=10, pad=0, seed=123)
    other.load_state_dict(sd2)
    assert len(other) == len(buf) and other.num_trajectories == buf.num_trajectories
    assert other.capacity == 800 and other.pad == 7
    extra = [make_traj(100 + i, int(rng.integers(1, 150)), rng) for i in range(10)]
    for step in range(12):
        if step >= 6:  # keep adding after the restore: same evictions, same samples
            add(buf, extra[step - 6])
            add(other, extra[step - 6])
        bs = [1, 64, 300, 799, 2000, 50][step % 6]
        b1, b2 = buf.sample(bs), other.sample(bs)
        for name in ["obs", "prev_obs", "prev_act", "prev_rew", "act", "rew", "terminated", "reset", "mask"]:
            assert torch.equal(getattr(b1, name), getattr(b2, name)), name
    with pytest.raises(ValueError, match="obs_dim"):
        TrajectoryBuffer(OBS_DIM + 1, ACT_DIM).load_state_dict(sd)
    # as tensors inside a torch checkpoint (weights_only load)
    f = io.BytesIO()
    torch.save({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in sd.items()}, f)
    f.seek(0)
    third = TrajectoryBuffer(OBS_DIM, ACT_DIM)
    third.load_state_dict(torch.load(f, weights_only=True))
    ref_buf = _restored(sd)
    assert stored_uids(third) == stored_uids(ref_buf)
    assert torch.equal(third.sample(300).obs, ref_buf.sample(300).obs)


def _restored(sd):
    b = TrajectoryBuffer(OBS_DIM, ACT_DIM)
    b.load_state_dict(sd)
    return b


def test_batch_to_and_helpers():
    rng = np.random.default_rng(1)
    buf = TrajectoryBuffer(OBS_DIM, ACT_DIM, capacity=1000, seed=0)
    for uid in range(1, 6):
        add(buf, make_traj(uid, 20, rng))
    b = buf.sample(50)
    b2 = b.to("cpu")
    assert isinstance(b2, Batch) and torch.equal(b2.obs, b.obs)
    x = torch.arange(12.0).reshape(2, 3, 2)
    nv = next_view(x)
    assert torch.equal(nv[:, :2], x[:, 1:]) and not nv[:, 2].any()


def test_2000_transitions_of_1000_step_trajectories_pack_into_two_rows():
    """The paper's batch: two whole 1000-step trajectories, one per row, each followed by its final slot and pad."""
    rng = np.random.default_rng(0)
    obs_dim, act_dim = 17, 6
    buf = TrajectoryBuffer(obs_dim, act_dim, capacity=200_000, seed=0)
    obs = rng.standard_normal((1001, obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, (1000, act_dim)).astype(np.float32)
    rew = rng.standard_normal(1000).astype(np.float32)
    for i in range(150):
        obs[:, 0] = i
        buf.add_trajectory(obs, act, rew, False)
    b = buf.sample(2000)
    assert b.num_transitions == 2000 and b.reset.shape == (2, 1008)
    assert b.reset[:, 0].all() and int(b.reset.sum()) == 2 and b.mask[:, 1000:].sum() == 0
    first_obs = b.obs[:, 0, 0]  # which stored trajectory each row holds: two different ones
    assert first_obs[0] != first_obs[1] and torch.equal(b.obs[:, :1001, 1:], torch.from_numpy(obs[:, 1:]).expand(2, -1, -1))
