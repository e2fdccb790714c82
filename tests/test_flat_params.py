"""Optimiser groups laid out flat (the CPU layout) train exactly as per-parameter groups do, and a saved
optimiser state moves between the two layouts without changing what the next step does."""

import copy

import numpy as np
import pytest
import torch

from resel_train.algo import make_adamw
from resel_train.flat_params import ParamGroups, fit_optimizer_state


def net_and_groups(flat: bool, seed: int = 0) -> tuple[torch.nn.Module, ParamGroups, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ELU(), torch.nn.Linear(6, 6), torch.nn.ELU(),
                              torch.nn.Linear(6, 2))
    groups = ParamGroups([{"name": "first", "params": list(net[0].parameters()), "lr": 1e-2},
                          {"name": "rest", "params": [*net[2].parameters(), *net[4].parameters()], "lr": 3e-2}], flat)
    return net, groups, make_adamw(groups.groups, 1e-2, torch.device("cpu"))


def train(net, groups, opt, steps: int, seed: int = 1, frozen_bias: bool = False) -> None:
    """``steps`` AdamW steps on a fixed regression; ``frozen_bias``: the last bias gets no gradient."""
    g = torch.Generator().manual_seed(seed)
    net[4].bias.requires_grad_(not frozen_bias)
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)
        groups.zero_grad()
        (net(x) - y).pow(2).mean().backward()
        opt.step()
    net[4].bias.requires_grad_(True)


def test_flat_groups_are_views_and_train_as_per_parameter_groups():
    flat_net, flat, flat_opt = net_and_groups(True)
    ref_net, ref, ref_opt = net_and_groups(False)
    assert len(flat.tensors) == 2 and flat.tensors[0].numel() == 4 * 6 + 6
    assert all(p.untyped_storage().data_ptr() == flat.tensors[1].untyped_storage().data_ptr()
               for p in [*flat_net[2].parameters(), *flat_net[4].parameters()])
    train(flat_net, flat, flat_opt, 7)
    train(ref_net, ref, ref_opt, 7)
    for a, b in zip(flat_net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert float(flat.grad_norm()) == pytest.approx(float(ref.grad_norm()), rel=1e-6)
    ref_net.load_state_dict({k: v + 1 for k, v in ref_net.state_dict().items()})  # state dicts write the views
    flat_net.load_state_dict(ref_net.state_dict())
    torch.testing.assert_close(flat.tensors[1], torch.cat([p.detach().reshape(-1) for p in list(ref_net.parameters())[2:]]))


@pytest.mark.parametrize("saved_flat,load_flat,frozen_bias", [
    (False, True, False), (True, False, False), (True, True, False), (False, False, False),
    (False, False, True),  # per parameter, one of them without state yet: kept as it is
    (True, False, True),  # flat, one parameter never given a gradient: zero moments, so it stays put
])
def test_a_saved_state_resumes_in_either_layout_to_the_same_next_steps(saved_flat, load_flat, frozen_bias):
    net, groups, opt = net_and_groups(saved_flat)
    train(net, groups, opt, 5, frozen_bias=frozen_bias)
    saved, weights = copy.deepcopy(opt.state_dict()), {k: v.clone() for k, v in net.state_dict().items()}
    train(net, groups, opt, 3, seed=2)  # what the saved run does next

    resumed_net, resumed, resumed_opt = net_and_groups(load_flat, seed=9)
    resumed_net.load_state_dict(weights)
    resumed_opt.load_state_dict(fit_optimizer_state(saved, resumed_opt, resumed))
    assert [g["name"] for g in resumed_opt.param_groups] == ["first", "rest"]
    train(resumed_net, resumed, resumed_opt, 3, seed=2)
    for a, b in zip(resumed_net.parameters(), net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_state_of_another_model_is_refused():
    net, groups, opt = net_and_groups(True)
    train(net, groups, opt, 1)
    other = torch.nn.Sequential(torch.nn.Linear(4, 7), torch.nn.Linear(7, 2))
    other_groups = ParamGroups([{"params": list(other[0].parameters())}, {"params": list(other[1].parameters())}],
                               flat=False)
    other_opt = make_adamw(other_groups.groups, 1e-2, torch.device("cpu"))
    with pytest.raises(ValueError, match="another model"):
        fit_optimizer_state(opt.state_dict(), other_opt, other_groups)


@pytest.mark.parametrize("encoder", ["mamba", "gru", "mlp"])
def test_the_update_with_flat_groups_equals_the_update_per_parameter(monkeypatch, encoder):
    """Four RESeL updates (two with a policy step) in the CPU's flat layout and per parameter, from the same
    weights and draws: the same networks, so no parameter goes without a gradient in an update."""
    from resel_train import algo
    from resel_train.buffer import TrajectoryBuffer
    from resel_train.config import resolve_config

    cfg = resolve_config("Pendulum-V", overrides=["model.mamba.d_state=4", "model.mamba.d_conv=4", "model.embed=16",
                                                  "model.hidden=16", "model.mamba.dt_rank=2",
                                                  f"model.encoder={encoder}"])
    torch.manual_seed(0)
    flat_agent = algo.RESeL(1, 1, False, cfg.model, cfg.algo, seed=0)
    monkeypatch.setattr(algo, "ParamGroups", lambda groups, flat, grads=True: ParamGroups(groups, False, grads))
    torch.manual_seed(0)  # the same initial weights
    ref_agent = algo.RESeL(1, 1, False, cfg.model, cfg.algo, seed=0)
    assert len(flat_agent.critic_opt.param_groups[1]["params"]) == 1 < len(ref_agent.critic_opt.param_groups[1]["params"])
    rng = np.random.default_rng(0)
    buf = TrajectoryBuffer(1, 1, pad=8, seed=0)
    for length in (30, 17):
        buf.add_trajectory(rng.normal(size=(length + 1, 1)).astype(np.float32),
                           rng.uniform(-1, 1, size=(length, 1)).astype(np.float32),
                           rng.normal(size=length).astype(np.float32), False)
    for _ in range(4):
        batch = buf.sample(40)
        noise = flat_agent.draw_noise(*batch.reset.shape)
        assert torch.equal(ref_agent.draw_noise(*batch.reset.shape).target, noise.target)
        got, want = flat_agent.update(batch, noise), ref_agent.update(batch, noise)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    for net in ("policy", "critic", "critic_target"):
        for (name, a), b in zip(getattr(flat_agent, net).named_parameters(), getattr(ref_agent, net).parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{net}.{name}")
