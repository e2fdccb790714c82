"""Lay packed rows out one trajectory segment per row, for sequence kernels that cannot take resets.

A packed batch (batch, L) holds several trajectories per row, each starting at a reset. Kernels such
as cuDNN's ``nn.GRU`` run every row from one initial state to its end, so the rows are split at their
resets into segments, which are gathered one per row of a (segments, max_len) batch, right-padded
with zeros: padding only follows a segment's last step, so it never changes a valid output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SegmentLayout:
    """Where every step (row, t) of a packed (batch, L) batch sits in the padded (segments, max_len) one.

    ``index[row * L + t] = segment * max_len + position in the segment``; ``row_first[row]`` is the
    segment that starts at (row, 0) and may continue a carried state.
    """

    batch: int
    length: int
    num_segments: int
    max_len: int
    index: Tensor  # (batch * L,) int64
    row_first: Tensor  # (batch,) int64

    def pack(self, x: Tensor) -> Tensor:
        """(batch, L, features) -> (segments, max_len, features), zeros in the padding."""
        flat = x.reshape(self.batch * self.length, -1)
        out = flat.new_zeros(self.num_segments * self.max_len, flat.shape[1])
        return out.index_copy(0, self.index, flat).view(self.num_segments, self.max_len, -1)

    def unpack(self, y: Tensor) -> Tensor:
        """(segments, max_len, features) -> (batch, L, features); the padding is dropped."""
        flat = y.reshape(self.num_segments * self.max_len, -1)
        return flat.index_select(0, self.index).view(self.batch, self.length, -1)

    def initial(self, state: Tensor, carried: Tensor) -> Tensor:
        """(batch, features) state -> (segments, features): ``state[row]`` for the first segment of a
        row where ``carried[row]`` (its first step is not a reset), zeros for every other segment."""
        kept = state * carried.to(state.dtype)[:, None]
        return state.new_zeros(self.num_segments, state.shape[1]).index_copy(0, self.row_first, kept)


def segment_layout(resets: Tensor) -> SegmentLayout:
    """Segments of a packed batch: a new one at every reset and at every row start (so none is empty,
    and none crosses rows). Built with vectorised ops; the one host sync reads the segment count and
    the longest segment, which size the padded batch."""
    batch, length = resets.shape
    starts = resets.to(torch.bool).clone()
    starts[:, 0] = True
    starts = starts.reshape(-1)
    segment = starts.cumsum(0) - 1  # segment id of every step, in row-major order
    steps = torch.arange(starts.numel(), device=resets.device)
    position = steps - torch.where(starts, steps, 0).cummax(0).values  # steps since the segment began
    num_segments, max_len = torch.stack([segment[-1] + 1, position.max() + 1]).tolist()  # host sync
    return SegmentLayout(
        batch=batch, length=length, num_segments=num_segments, max_len=max_len,
        index=segment * max_len + position, row_first=segment.view(batch, length)[:, 0],
    )
