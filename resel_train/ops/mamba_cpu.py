"""The Mamba mixer, and the whole Mamba context encoder, as single autograd nodes over the CPU kernels.

The mixer: ``in_proj`` -> causal conv -> SiLU -> ``x_proj`` -> ``dt_proj`` -> selective scan (delta bias and
softplus, D skip, z gate) -> ``out_proj``, as mamba-ssm's ``mamba_inner_fn`` groups them. The encoder: its
input layer (with the history embedding's projections folded in) and ELU, then per block RMSNorm, the mixer,
the residual, the feed-forward (GELU) and LayerNorm, then ELU and the output layer. Each is the same function
as its generic path (``resel_train.nets.mamba`` and ``resel_train.nets.encoders``, composed op by op under
autograd), with the backward written out: on a CPU, where every dispatched op and autograd node costs
microseconds whatever its size, the chain's dozens of nodes, their views and the gradient bookkeeping
between them are a sizeable share of its cost at the sizes a laptop trains. The products read
transposed operands in place (batched matmuls), so no layout copies are made between the kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resel_train.ops import cpu_kernel
from resel_train.ops.fold import fold_backward, fold_projections

MIXER_WEIGHTS = 9  # in_proj, conv weight (d_inner, d_conv), conv bias, x_proj, dt_proj weight and bias, A_log, D, out_proj


def mixer_scan(
    x: Tensor, in_proj_weight: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, x_proj_weight: Tensor,
    dt_proj_weight: Tensor, dt_proj_bias: Tensor, A_log: Tensor, D: Tensor, out_proj_weight: Tensor,
    reset: Tensor | None, conv_state: Tensor | None, ssm_state: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """x (b, L, d_model) -> (the mixer's output (b, L, d_model), the conv window to carry (b, d_inner,
    d_conv - 1), the last scan state (b, d_inner, d_state)); the states before step 0 are zero when None.
    Float32 CPU tensors only (``cpu_kernel.applies_to``); the projections have no bias (mamba-ssm's layout)."""
    reset = None if reset is None else cpu_kernel.as_bool(reset).contiguous()
    return _KernelMixer.apply(x, in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                              A_log, D, out_proj_weight, reset, conv_state, ssm_state)


def _bc_rows(x_dbl: Tensor, dt_rank: int, d_state: int) -> tuple[Tensor, Tensor]:
    """B and C as the scan kernel reads them: (b, L, d_state) slices of the projection, in place."""
    return (cpu_kernel.step_rows(x_dbl[..., dt_rank:dt_rank + d_state]),
            cpu_kernel.step_rows(x_dbl[..., dt_rank + d_state:]))


@dataclass
class _MixerMeta:
    has_conv_bias: bool
    conv_state_shape: torch.Size | None


def _mixer_forward(lib, x: Tensor, weights: Sequence[Tensor | None], reset: Tensor | None, conv_state: Tensor | None,
                   ssm_state: Tensor | None, keep: bool) -> tuple[Tensor, Tensor, Tensor, list, _MixerMeta]:
    """The mixer's forward: (out, conv window, last state, what the backward reads, its meta). ``keep``: for a backward."""
    in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight = weights
    batch, length, d_model = x.shape
    d_inner = conv_weight.shape[0]
    x = x.contiguous()
    dt_rank, d_state = dt_proj_weight.shape[1], A_log.shape[1]
    # (b, d_inner, L) each, as the conv and gate kernels read them: W x^T made in that layout (two products
    # cost less than one and the two transposing copies after it)
    xs = torch.bmm(in_proj_weight[:d_inner].expand(batch, -1, -1), x.transpose(1, 2))
    z = torch.bmm(in_proj_weight[d_inner:].expand(batch, -1, -1), x.transpose(1, 2))
    conv_weight = conv_weight.contiguous()
    history = None if conv_state is None or conv_state.shape[-1] == 0 else conv_state.contiguous()
    xc, conv_final = cpu_kernel.conv_forward(lib, xs, conv_weight, conv_bias, reset, history)
    u = F.silu(xc)
    # x_dbl = u^T W_x^T: (b, L, dt_rank + 2 d_state), B and C read from it in place
    x_dbl = torch.bmm(u.transpose(1, 2), x_proj_weight.t().expand(batch, -1, -1))
    B_l, C_l = _bc_rows(x_dbl, dt_rank, d_state)
    raw = torch.bmm(dt_proj_weight.expand(batch, -1, -1), x_dbl[..., :dt_rank].transpose(1, 2))  # (b, d_inner, L)
    A = -torch.exp(A_log)
    h0 = None if ssm_state is None else ssm_state.contiguous()
    gated, last, dt, y_pre = cpu_kernel.gated_scan_forward(lib, u, raw, A, B_l, C_l, D, z, dt_proj_bias, True,
                                                           reset, h0, keep=keep)
    out = torch.bmm(gated.transpose(1, 2), out_proj_weight.t().expand(batch, -1, -1))  # (b, L, d_model)
    saved = [x, xs, z, xc, u, x_dbl, raw, dt, A, gated, y_pre, reset, history, h0, in_proj_weight, conv_weight,
             x_proj_weight, dt_proj_weight, dt_proj_bias, D, out_proj_weight] if keep else []
    meta = _MixerMeta(conv_bias is not None, None if conv_state is None else conv_state.shape)
    return out, conv_final, last, saved, meta


def _mixer_backward(lib, saved: Sequence[Tensor | None], meta: _MixerMeta, g_out: Tensor, g_conv_final: Tensor | None,
                    g_last: Tensor | None) -> tuple[Tensor, list[Tensor | None], Tensor | None, Tensor | None]:
    """Gradients (x, the nine weights in :data:`MIXER_WEIGHTS` order, conv state, ssm state) of :func:`_mixer_forward`."""
    (x, xs, z, xc, u, x_dbl, raw, dt, A, gated, y_pre, reset, history, h0, in_proj_weight, conv_weight,
     x_proj_weight, dt_proj_weight, dt_proj_bias, D, out_proj_weight) = saved
    batch, length, d_model = x.shape
    dt_rank, d_state = dt_proj_weight.shape[1], A.shape[1]
    B_l, C_l = _bc_rows(x_dbl, dt_rank, d_state)
    g_out = g_out.contiguous()
    g_out_proj = torch.bmm(g_out.transpose(1, 2), gated.transpose(1, 2)).sum(0)  # out = gated^T W_out^T
    g_gated = torch.bmm(out_proj_weight.t().expand(batch, -1, -1), g_out.transpose(1, 2))  # (b, d_inner, L)
    du, g_raw, dA, dB, dC, g_D, g_z, g_dt_bias, dh0 = cpu_kernel.gated_scan_backward(
        lib, u, raw, dt, A, B_l, C_l, D, z, dt_proj_bias, True, y_pre, reset, h0, g_gated,
        None if g_last is None else g_last.contiguous())
    dt_low = x_dbl[..., :dt_rank]
    # raw = W_dt dt_low^T, x_dbl = u^T W_x^T
    g_dt_low = torch.bmm(g_raw.transpose(1, 2), dt_proj_weight.expand(batch, -1, -1))  # (b, L, dt_rank)
    g_dt_proj = torch.bmm(g_raw, dt_low).sum(0)
    g_x_dbl = torch.cat([g_dt_low, dB, dC], dim=-1)  # (b, L, dt_rank + 2 d_state)
    g_x_proj = torch.bmm(g_x_dbl.transpose(1, 2), u.transpose(1, 2)).sum(0)
    du.baddbmm_(x_proj_weight.t().expand(batch, -1, -1), g_x_dbl.transpose(1, 2))
    g_xc = torch.ops.aten.silu_backward(du, xc)
    dfinal = None if g_conv_final is None or g_conv_final.shape[-1] == 0 else g_conv_final.contiguous()
    g_xs, g_conv_weight, g_conv_bias, g_history = cpu_kernel.conv_backward(
        lib, xs, conv_weight, meta.has_conv_bias, reset, history, g_xc, dfinal)
    g_xz = torch.cat([g_xs, g_z], dim=1)  # (b, 2 d_inner, L)
    g_x = torch.bmm(g_xz.transpose(1, 2), in_proj_weight.expand(batch, -1, -1))  # (b, L, d_model)
    g_in_proj = torch.bmm(g_xz, x).sum(0)
    g_conv_state = None
    if meta.conv_state_shape is not None:  # a (b, d, 0) window (d_conv 1): nothing flows back
        g_conv_state = g_history if g_history is not None else xs.new_zeros(meta.conv_state_shape)
    grads = [g_in_proj, g_conv_weight, g_conv_bias, g_x_proj, g_dt_proj, g_dt_bias, dA * A, g_D, g_out_proj]
    return g_x, grads, g_conv_state, dh0


class _KernelMixer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, *inputs):
        *weights, reset, conv_state, ssm_state = inputs
        out, conv_final, last, saved, ctx.meta = _mixer_forward(cpu_kernel.load(), x, weights, reset, conv_state,
                                                                ssm_state, keep=any(ctx.needs_input_grad))
        ctx.save_for_backward(*saved)
        return out, conv_final, last

    @staticmethod
    def backward(ctx, g_out, g_conv_final, g_last):
        g_x, grads, g_conv_state, dh0 = _mixer_backward(cpu_kernel.load(), ctx.saved_tensors, ctx.meta, g_out,
                                                        g_conv_final, g_last)
        return (g_x, *grads, None, g_conv_state, dh0)


# ---- the whole encoder -------------------------------------------------------------------------------------------

BLOCK_TENSORS = 2 + MIXER_WEIGHTS + 6 + 2  # norm weight and eps, the mixer's, the feed-forward's, the two states


@dataclass(frozen=True)
class EncoderLayout:
    """How :func:`encoder_scan`'s flat tensor list splits: the history projections (modules, whose weight and bias
    follow the input layer's), the extra input layers, the blocks and the LayerNorms' eps."""

    projections: tuple[nn.Linear, ...]
    input_more: int
    blocks: int
    ln_eps: float


def encoder_scan(x: Tensor, reset: Tensor | None, layout: EncoderLayout, tensors: Sequence[Tensor | None]
                 ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The Mamba encoder's sequence form over (b, L, in) inputs -> ((b, L, out), the final (conv, ssm) state per block).

    ``tensors``, in order: the input layer's weight and bias; each projection's weight and bias; each extra input
    layer's weight and bias; per block the RMSNorm weight and its (1,) eps, the mixer's weights in
    :data:`MIXER_WEIGHTS` order (the conv weight as ``nn.Conv1d`` holds it, (d_inner, 1, d_conv)), the
    feed-forward's two layers (weight, bias each), the LayerNorm's weight and bias, and the conv window and scan
    state before step 0 (None: zero); then the output layer's weight and bias. Float32 CPU tensors only.
    """
    reset = None if reset is None else cpu_kernel.as_bool(reset).contiguous()
    out, *finals = _KernelMambaEncoder.apply(x, reset, layout, *tensors)
    return out, tuple(finals)


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return torch.addmm(bias, x, weight.t())


class _KernelMambaEncoder(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, reset, layout: EncoderLayout, *tensors):
        lib = cpu_kernel.load()
        keep = any(ctx.needs_input_grad)
        ctx.set_materialize_grads(False)
        batch, length, _ = x.shape
        rows = x.contiguous().view(batch * length, -1)
        w_in, b_in = tensors[0], tensors[1]
        n_proj = len(layout.projections)
        k = 2 + 2 * n_proj
        if n_proj:
            w_fold, b_fold = fold_projections(w_in.t(), b_in, layout.projections)
        else:
            w_fold, b_fold = w_in.t(), b_in
        hs = [cpu_kernel.elu_forward(lib, torch.addmm(b_fold, rows, w_fold))]  # each input layer's output
        for _ in range(layout.input_more):
            hs.append(cpu_kernel.elu_forward(lib, _linear(hs[-1], tensors[k], tensors[k + 1])))
            k += 2
        h, saved, metas, finals, spans = hs[-1], [rows, w_fold, *hs], [], [], []
        for _ in range(layout.blocks):
            norm_w, eps, *mixer_w = tensors[k:k + 2 + MIXER_WEIGHTS]
            w1, b1, w2, b2, ln_w, ln_b, conv_state, ssm_state = tensors[k + 2 + MIXER_WEIGHTS:k + BLOCK_TENSORS]
            k += BLOCK_TENSORS
            d_model = h.shape[1]
            mixer_w[1] = mixer_w[1].view(mixer_w[1].shape[0], -1)  # conv weight (d_inner, d_conv)
            normed, rstd = cpu_kernel.rms_norm_forward(lib, h, norm_w, eps)
            y, conv_final, last, mixer_saved, meta = _mixer_forward(lib, normed.view(batch, length, d_model), mixer_w,
                                                                    reset, conv_state, ssm_state, keep)
            r = torch.add(h, y.view(-1, d_model))
            f1 = _linear(r, w1, b1)
            g1 = F.gelu(f1)
            s = torch.add(r, _linear(g1, w2, b2))
            h_next, mean, rstd_ln = torch.native_layer_norm(s, (d_model,), ln_w, ln_b, layout.ln_eps)
            if keep:
                own = [h, norm_w, rstd, r, w1, f1, g1, w2, s, mean, rstd_ln, ln_w, ln_b]
                spans.append((len(saved), len(own), len(mixer_saved)))
                saved += own + mixer_saved
            metas.append(meta)
            finals += [conv_final, last]
            h = h_next
        w_out, b_out = tensors[k], tensors[k + 1]
        e = cpu_kernel.elu_forward(lib, h)
        out = _linear(e, w_out, b_out).view(batch, length, -1)
        if keep:  # then the first layers' weights: the input layer's, the projections', the extra layers'
            saved += [e, w_out, *tensors[:2 + 2 * n_proj + 2 * layout.input_more]]
            ctx.save_for_backward(*saved)
        ctx.layout, ctx.metas, ctx.spans, ctx.shape = layout, metas, spans, (batch, length)
        return (out, *finals)

    @staticmethod
    def backward(ctx, g_out, *g_finals):
        lib = cpu_kernel.load()
        layout, (batch, length) = ctx.layout, ctx.shape
        n_proj, n_more = len(layout.projections), layout.input_more
        saved = ctx.saved_tensors
        rows, w_fold, hs = saved[0], saved[1], saved[2:3 + n_more]
        blocks = [(saved[start:start + n_own], saved[start + n_own:start + n_own + n_mixer])
                  for start, n_own, n_mixer in ctx.spans]
        e, w_out, w_in, b_in, *rest = saved[sum(ctx.spans[-1]):]
        proj, more = rest[:2 * n_proj], rest[2 * n_proj:]

        if g_out is None:  # only a final state was used
            g_out = e.new_zeros(batch, length, w_out.shape[0])
        g = g_out.contiguous().view(batch * length, -1)
        grads_out = [torch.mm(g.t(), e), g.sum(0)]
        dh = cpu_kernel.elu_backward(lib, e, torch.mm(g, w_out))
        block_grads = []
        for i in reversed(range(layout.blocks)):
            (h, norm_w, rstd, r, w1, f1, g1, w2, s, mean, rstd_ln, ln_w, ln_b), mixer_saved = blocks[i]
            d_model = h.shape[1]
            ds, d_ln_w, d_ln_b = torch.ops.aten.native_layer_norm_backward(
                dh, s, [d_model], mean, rstd_ln, ln_w, ln_b, [True, True, True])
            d_g1 = torch.mm(ds, w2)
            d_w2, d_b2 = torch.mm(ds.t(), g1), ds.sum(0)
            d_f1 = torch.ops.aten.gelu_backward(d_g1, f1)
            d_w1, d_b1 = torch.mm(d_f1.t(), r), d_f1.sum(0)
            dr = torch.addmm(ds, d_f1, w1)
            g_normed, mixer_grads, g_conv_state, g_ssm_state = _mixer_backward(
                lib, mixer_saved, ctx.metas[i], dr.view(batch, length, d_model), g_finals[2 * i], g_finals[2 * i + 1])
            dx_norm, d_norm_w = cpu_kernel.rms_norm_backward(lib, h, norm_w, rstd, g_normed.view(-1, d_model))
            dh = dr.add_(dx_norm)
            mixer_grads[1] = mixer_grads[1].unsqueeze(1)  # as nn.Conv1d holds the weight
            block_grads.append([d_norm_w, None, *mixer_grads, d_w1, d_b1, d_w2, d_b2, d_ln_w, d_ln_b,
                                g_conv_state, g_ssm_state])
        more_grads = []
        for j in reversed(range(n_more)):
            da = cpu_kernel.elu_backward(lib, hs[j + 1], dh)
            more_grads.append([torch.mm(da.t(), hs[j]), da.sum(0)])
            dh = torch.mm(da, more[2 * j])
        da = cpu_kernel.elu_backward(lib, hs[0], dh)
        d_rows = torch.mm(da, w_fold.t()).view(batch, length, -1) if ctx.needs_input_grad[0] else None
        d_fold, d_b_in = torch.mm(rows.t(), da), da.sum(0)
        if n_proj:
            d_w_in_t, d_pw, d_pb = fold_backward(w_in.t(), list(zip(proj[0::2], proj[1::2])), d_fold, d_b_in)
            first_grads = [d_w_in_t.t(), d_b_in] + [t for pair in zip(d_pw, d_pb) for t in pair]
        else:
            first_grads = [d_fold.t(), d_b_in]
        grads = first_grads + [t for pair in reversed(more_grads) for t in pair]
        grads += [t for block in reversed(block_grads) for t in block] + grads_out
        return (d_rows, None, None, *grads)
