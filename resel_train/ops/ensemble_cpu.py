"""The critic's ensemble heads as one autograd node over the CPU kernels.

The same function as ``Critic.ensemble``'s generic path: the input projections folded into the first
layer (``ops.fold.fold_projections``), then the members' ELU MLPs (``nets.critic.ensemble_mlp``),
with the backward written out, fold included. At the sizes a laptop trains, dispatching the chain's
autograd nodes and views is a sizeable share of its cost; as one node it is a fixed list of ops, and
the weight gradients are skipped when no weight needs one (the policy step's pass through the critic
wants the action's gradient only).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from resel_train.ops import cpu_kernel
from resel_train.ops.fold import fold_backward, fold_projections


def applies(x: Tensor, projections: list[nn.Linear], n_layers: int) -> bool:
    """Whether :func:`ensemble_heads` takes these inputs: the CPU kernels' float32, projections with biases, and
    the critic's three layers."""
    return cpu_kernel.applies_to(x) and n_layers == 3 and all(p.bias is not None for p in projections)


def ensemble_heads(x: Tensor, projections: list[nn.Linear], layers: list[tuple[Tensor, Tensor]]) -> Tensor:
    """x (N, raw inputs + context) -> (members, N, out): the three layers' stacked (weight, bias) of the members
    to run, the first one's input rows starting with the ``projections``' outputs (see ``fold_projections``)."""
    (w1, b1), (w2, b2), (w3, b3) = layers
    proj = [t for p in projections for t in (p.weight, p.bias)]  # inputs of the node, so they get gradients
    return _KernelEnsemble.apply(x, projections, w1, b1, w2, b2, w3, b3, *proj)


class _KernelEnsemble(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, projections, w1, b1, w2, b2, w3, b3, *proj):
        lib = cpu_kernel.load()
        m, in_dim, width = w1.shape
        p_w, p_b = proj[0::2], proj[1::2]
        flat = w1.transpose(0, 1).reshape(in_dim, m * width)
        w_fold, b_fold = fold_projections(flat, b1.reshape(m * width), projections,
                                          in_dim - sum(w.shape[0] for w in p_w))
        h1 = cpu_kernel.elu_members_forward(lib, torch.addmm(b_fold, x, w_fold), m)
        h2 = cpu_kernel.elu_forward(lib, torch.baddbmm(b2, h1, w2))
        if w3.shape[-1] == 1:  # a dot product per member: cheaper than (N, width) x (width, 1) matmuls
            out = (h2 * w3.transpose(1, 2)).sum(-1, keepdim=True) + b3
        else:
            out = torch.baddbmm(b3, h2, w3)
        ctx.save_for_backward(x, w_fold, flat, h1, h2, w2, w3, *p_w, *p_b)
        ctx.n_proj = len(p_w)
        return out

    @staticmethod
    def backward(ctx, g):
        x, w_fold, flat, h1, h2, w2, w3, *proj = ctx.saved_tensors
        p_w, p_b = proj[:ctx.n_proj], proj[ctx.n_proj:]
        lib = cpu_kernel.load()
        m, width = h1.shape[0], h1.shape[2]
        need = ctx.needs_input_grad
        weights = any(need[1:])
        g = g.contiguous()
        if w3.shape[-1] == 1:
            dh2 = g * w3.transpose(1, 2)
            dw3 = (h2 * g).sum(1).unsqueeze(-1) if weights else None
        else:
            dh2 = torch.bmm(g, w3.transpose(1, 2))
            dw3 = torch.bmm(h2.transpose(1, 2), g) if weights else None
        d2 = cpu_kernel.elu_backward(lib, h2, dh2)
        d1 = cpu_kernel.elu_members_backward(lib, h1, torch.bmm(d2, w2.transpose(1, 2)))  # (N, m * width)
        dx = torch.mm(d1, w_fold.t()) if need[0] else None
        if not weights:
            return (dx,) + (None,) * (7 + 2 * ctx.n_proj)
        db_fold = d1.sum(0)
        d_flat, d_pw, d_pb = fold_backward(flat, list(zip(p_w, p_b)), torch.mm(x.t(), d1), db_fold)
        dw1 = d_flat.reshape(flat.shape[0], m, width).transpose(0, 1)
        grads = [dx, None, dw1, db_fold.reshape(m, 1, width), torch.bmm(h1.transpose(1, 2), d2), d2.sum(1, keepdim=True),
                 dw3, g.sum(1, keepdim=True)]
        for d_w, d_b in zip(d_pw, d_pb):
            grads += [d_w, d_b]
        return tuple(grads)
