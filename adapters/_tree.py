"""A binary prototype tree's arithmetic, shared by ProtoTree and CaBRNet's ProtoTree head.

A tree is (NB, 2) `children` per branch, [not similar, similar], branch 0 the root; a child >= 0 is a
branch, < 0 the leaf -1 - child.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def leaf_paths(children: torch.Tensor, num_leaves: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(NL, NB) masks of the branches each leaf's path turns left / right at (children: (NB, 2),
    >= 0 a branch, < 0 the leaf -1 - child)."""
    left = torch.zeros(num_leaves, len(children))
    right = torch.zeros(num_leaves, len(children))
    stack: list[tuple[int, list[tuple[int, int]]]] = [(0, [])]
    while stack:
        node, path = stack.pop()
        for side, child in enumerate(children[node].tolist()):
            steps = path + [(node, side)]
            if child >= 0:
                stack.append((child, steps))
                continue
            for branch, turn in steps:
                (right if turn else left)[-1 - child, branch] = 1
    return left, right


def tree_output(children: torch.Tensor, sim: torch.Tensor, leaf: Callable[[int], torch.Tensor],
                log: bool) -> torch.Tensor:
    """(B, C) a tree's output node by node from branch 0, as ProtoTree's and CaBRNet's code compute it: (1 - s) left
    + s right; with `log`, sim is log s and leaf(i) a log distribution: logsumexp(log1mexp(|log s| + 1e-7) + left,
    log s + right), log1mexp(x) = log(-expm1(-x)) below log 2, log1p(-exp(-x)) above (children: (NB, 2))."""
    def node(k: int) -> torch.Tensor:
        left, right = (node(c) if c >= 0 else leaf(-1 - c) for c in children[k].tolist())
        ps = sim[:, k:k + 1]
        if not log:
            return (1 - ps) * left + ps * right
        x = ps.abs() + 1e-7
        one_minus = torch.where(x < math.log(2), torch.log(-torch.expm1(-x)), torch.log1p(-torch.exp(-x)))
        return torch.logsumexp(torch.stack((one_minus + left, ps + right)), dim=0)

    return node(0)
