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
    """Whether :func:`ensemble_heads` takes inputs like ``x``: the CPU kernels' float32, projections with biases,
    and the critic's three layers."""
    return cpu_kernel.applies_to(x) and n_layers == 3 and all(p.bias is not None for p in projections)


def ensemble_heads(inputs: list[Tensor], projections: list[nn.Linear], layers: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``inputs`` (each (..., width): the raw inputs, then the context) -> (members, N, out) over their N rows: the
    three layers' stacked (weight, bias) of the members to run, the first one's input rows starting with the
    ``projections``' outputs (see ``fold_projections``). Each input gets its own gradient, and only if it needs
    one (the policy step's pass through the critic wants the action's alone)."""
    (w1, b1), (w2, b2), (w3, b3) = layers
    proj = [t for p in projections for t in (p.weight, p.bias)]  # inputs of the node, so they get gradients
    return _KernelEnsemble.apply(projections, len(inputs), *inputs, w1, b1, w2, b2, w3, b3, *proj)


class _KernelEnsemble(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projections, n_inputs, *tensors):
        inputs, (w1, b1, w2, b2, w3, b3) = tensors[:n_inputs], tensors[n_inputs:n_inputs + 6]
        proj = tensors[n_inputs + 6:]
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs], dim=-1)
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
        ctx.n_proj, ctx.input_shapes = len(p_w), [t.shape for t in inputs]
        return out

    @staticmethod
    def backward(ctx, g):
        x, w_fold, flat, h1, h2, w2, w3, *proj = ctx.saved_tensors
        p_w, p_b = proj[:ctx.n_proj], proj[ctx.n_proj:]
        lib = cpu_kernel.load()
        m, width = h1.shape[0], h1.shape[2]
        n_inputs = len(ctx.input_shapes)
        need_inputs, need = ctx.needs_input_grad[2:2 + n_inputs], ctx.needs_input_grad[2 + n_inputs:]
        weights = any(need)
        g = g.contiguous()
        if w3.shape[-1] == 1:
            dh2 = g * w3.transpose(1, 2)
            dw3 = (h2 * g).sum(1).unsqueeze(-1) if weights else None
        else:
            dh2 = torch.bmm(g, w3.transpose(1, 2))
            dw3 = torch.bmm(h2.transpose(1, 2), g) if weights else None
        d2 = cpu_kernel.elu_backward(lib, h2, dh2)
        d1 = cpu_kernel.elu_members_backward(lib, h1, torch.bmm(d2, w2.transpose(1, 2)))  # (N, m * width)
        d_inputs, start = [], 0
        for shape, needed in zip(ctx.input_shapes, need_inputs):  # the rows of W_fold each input met
            rows = w_fold[start:start + shape[-1]]
            d_inputs.append(torch.mm(d1, rows.t()).view(shape) if needed else None)
            start += shape[-1]
        if not weights:
            return (None, None, *d_inputs) + (None,) * (6 + 2 * ctx.n_proj)
        db_fold = d1.sum(0)
        d_flat, d_pw, d_pb = fold_backward(flat, list(zip(p_w, p_b)), torch.mm(x.t(), d1), db_fold)
        dw1 = d_flat.reshape(flat.shape[0], m, width).transpose(0, 1)
        grads = [None, None, *d_inputs, dw1, db_fold.reshape(m, 1, width), torch.bmm(h1.transpose(1, 2), d2),
                 d2.sum(1, keepdim=True), dw3, g.sum(1, keepdim=True)]
        for d_w, d_b in zip(d_pw, d_pb):
            grads += [d_w, d_b]
        return tuple(grads)
