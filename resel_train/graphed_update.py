"""The update replayed as CUDA graphs: one capture per (bucketed batch shape, step kind), one launch per update.

Run eagerly, a paper-size update launches about a thousand small kernels and the host, not the
GPU, sets the pace. :meth:`RESeL.compute_update` has no host synchronisation and takes
all its randomness as inputs, so it can be captured once and replayed. A graph replays one shape,
so batches are zero-padded to a few bucketed shapes (:func:`bucket`: at most 1/8 more slots),
which changes no loss (padding slots are masked and follow every trajectory) and, because the
noise is padded with the batch, no random draw either.

The first batch of each (shape, step kind) runs eagerly on a side stream (it initialises optimiser
state, cuBLAS handles and Triton's autotuning for that shape); the second is captured and replayed;
later ones only copy their inputs into the graph's static buffers and replay. At most
``max_graphs`` graphs are kept (least recently used evicted).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from resel_train.algo import RESeL, UpdateNoise
from resel_train.buffer import Batch

GraphKey = tuple[int, int, bool]  # (rows, length, policy step)


def bucket(n: int, significant_bits: int = 4) -> int:
    """Round ``n`` up to a number with at most ``significant_bits`` binary digits (at most 1/8 larger).

    1..16 stay as they are; 1008 -> 1024, 130 -> 144, 1000 -> 1024, 300 -> 320.
    """
    if n < 1:
        raise ValueError(f"bucket needs a positive size, got {n}")
    shift = max(n.bit_length() - significant_bits, 0)
    return -(-n >> shift) << shift


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    batch: Batch  # static device inputs the graph reads
    noise: UpdateNoise
    metrics: dict[str, Tensor]  # static device outputs the graph writes

    def load(self, batch: Batch, noise: UpdateNoise) -> None:
        """Copy a pinned host batch into the static inputs (asynchronous, ordered before the replay)."""
        for name in batch.__dataclass_fields__:
            getattr(self.batch, name).copy_(getattr(batch, name), non_blocking=True)
        self.noise.head_pair.copy_(noise.head_pair, non_blocking=True)
        for name in ("target", "policy"):  # None where the action space draws no noise (and policy on critic-only steps)
            if getattr(noise, name) is not None:
                getattr(self.noise, name).copy_(getattr(noise, name), non_blocking=True)


class GraphedUpdate:
    """``agent.update(batch, noise)`` through CUDA graphs: the same algorithm, a few launches per update."""

    def __init__(self, agent: RESeL, max_graphs: int = 16) -> None:
        self.device = agent.log_alpha.device
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the agent on a CUDA device, it is on {self.device}")
        self.agent, self.max_graphs = agent, max_graphs
        self._graphs: OrderedDict[GraphKey, _Captured] = OrderedDict()
        self._warmed: set[GraphKey] = set()
        self.captures = 0  # how many graphs were captured (a benchmark reports it)

    def __call__(self, batch: Batch, noise: UpdateNoise) -> dict[str, Tensor]:
        """One update from a host batch and its noise; returns device metrics (read them when logging)."""
        rows, length = (bucket(n) for n in batch.reset.shape)
        key = (rows, length, noise.policy_step)
        batch, noise = batch.padded(rows, length).pin_memory(), noise.padded(rows, length).pin_memory()
        captured = self._graphs.get(key)
        if captured is None and key not in self._warmed:
            self._warmed.add(key)
            return self._eager_on_side_stream(batch, noise)
        if captured is None:
            captured = self._capture(key, batch, noise)
        else:
            self._graphs.move_to_end(key)
            captured.load(batch, noise)
        captured.graph.replay()
        self.agent.critic_steps += 1
        return captured.metrics

    def _eager_on_side_stream(self, batch: Batch, noise: UpdateNoise) -> dict[str, Tensor]:
        main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            metrics = self.agent.update(batch.to(self.device, non_blocking=True),
                                        noise.to(self.device, non_blocking=True))
        main.wait_stream(side)
        return metrics

    def _capture(self, key: GraphKey, batch: Batch, noise: UpdateNoise) -> _Captured:
        static_batch = batch.to(self.device, non_blocking=True)
        static_noise = noise.to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()  # inputs in place before capture starts
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            metrics = self.agent.compute_update(static_batch, static_noise)
        captured = _Captured(graph, static_batch, static_noise, metrics)
        self._graphs[key] = captured
        self.captures += 1
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return captured
