"""Input projections folded into the next layer, and the fold's gradients written out for the CPU nodes.

The critic's heads and the context encoders read ``cat([P_1(x_1), ..., P_k(x_k), c])`` through a linear
layer, where each ``P_i`` is an ``nn.Linear`` embedding a narrow raw input (an observation, an action).
Folding the projections into that layer's weight makes its products over the batch as wide as the raw
inputs plus ``c`` rather than the embeddings: the same function of the same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def fold_projections(weight: Tensor, bias: Tensor, projections: Sequence[nn.Linear], rest: int = 0
                     ) -> tuple[Tensor, Tensor]:
    """The layer ``cat([P_1(x_1), ..., P_k(x_k), c]) @ weight + bias`` rewritten as ``cat([x_1, ..., x_k, c]) @ W + b``.

    ``weight`` is (in, out), multiplied from the right; its first row blocks are the outputs of the
    ``projections`` (``nn.Linear`` layers), in order, and its last ``rest`` rows take a block ``c`` used
    as it is. A projection P (weight (k, n), bias p) of an n-wide input becomes the (n, out) block
    P.weight^T @ W_block, and p @ W_block moves into the bias. Autograd takes the gradients through the
    fold; the CPU nodes, which run outside autograd, take them with :func:`fold_backward`.
    """
    widths = [p.out_features for p in projections]
    if sum(widths) + rest != weight.shape[0]:
        raise ValueError(f"the blocks cover {sum(widths) + rest} of the layer's {weight.shape[0]} input rows")
    projected, passed = weight.split([sum(widths), rest])
    folded = [torch.mm(p.weight.t(), rows) for p, rows in zip(projections, projected.split(widths))]
    biases = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.out_features) for p in projections])
    return torch.cat([*folded, passed]), torch.addmv(bias, projected.t(), biases)


def fold_backward(weight: Tensor, projections: Sequence[tuple[Tensor, Tensor]], d_weight_folded: Tensor,
                  d_bias_folded: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The gradients of :func:`fold_projections`' inputs from those of its outputs (W, b).

    ``weight``: the (in, out) weight that was folded; ``projections``: each projection's (weight, bias),
    biases present; the bias's own gradient is ``d_bias_folded`` itself. Returns (d weight, the
    projections' weight gradients, their bias gradients). With W_block' = P^T W_block and
    b' = b + p . W_block: dW_block = P dW_block' + p db', dP = W_block dW_block'^T, dp = W_block db'.
    """
    n_raw = [w.shape[1] for w, _ in projections]
    widths = [w.shape[0] for w, _ in projections]
    *d_folded, d_passed = d_weight_folded.split([*n_raw, d_weight_folded.shape[0] - sum(n_raw)])
    *blocks, _ = weight.split([*widths, weight.shape[0] - sum(widths)])
    d_rows, d_pw, d_pb = [], [], []
    for (w, b), rows, d_f in zip(projections, blocks, d_folded):
        d_rows.append(torch.addr(torch.mm(w, d_f), b, d_bias_folded))
        d_pw.append(torch.mm(rows, d_f.t()))
        d_pb.append(torch.mv(rows, d_bias_folded))
    return torch.cat([*d_rows, d_passed]), d_pw, d_pb
