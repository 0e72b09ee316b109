"""Differentiable structure features of the NB201 one-hot encoding, shared by the latency and accuracy nets.

Why: whether an edge computes anything depends on the whole cell (an op whose source is unreachable from
the input, or whose destination cannot reach the output, is removed by an exporter and costs nothing).
Writing that reachability as products of "edge is on" probabilities gives a feature that is exact on a
one-hot encoding and smooth on a noised one, so the same module serves prediction and diffusion guidance.
"""

from __future__ import annotations

import torch

NONE = 0  # index of the "none" op in cell.OPS
NUM_FEATURES = 30 + 24 + 1


def _or(a, b):
    return 1 - (1 - a) * (1 - b)


def soft_live(x: torch.Tensor) -> torch.Tensor:
    """(n, 6, 5) one-hot (or probabilities) -> (n, 6) probability that each edge is live.

    Edge order (1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2), as ``spaces.nb201.EDGES``.
    """
    on = 1 - x[..., NONE]
    r1 = on[:, 0]  # node 1 reachable from the input
    r2 = _or(on[:, 1], on[:, 2] * r1)
    o2 = on[:, 5]  # node 2 reaches the output
    o1 = _or(on[:, 4], on[:, 2] * o2)
    reach = torch.stack([o1, o2, r1 * o2, torch.ones_like(r1), r1, r2], dim=1)
    return on * reach


def nb201_features(x: torch.Tensor) -> torch.Tensor:
    """(n, 6, 5) -> (n, 55): the raw one-hot, the one-hot of live edges (ops 1..4), and 'connected'."""
    live = soft_live(x)
    live_ops = x[..., 1:] * live[..., None]
    connected = 1 - torch.prod(1 - live, dim=1, keepdim=True)
    return torch.cat([x.flatten(1), live_ops.flatten(1), connected], dim=1)
