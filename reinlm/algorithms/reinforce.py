"""REINFORCE advantages: the sequence score minus a baseline.

Dimension legend: B = sequences (prompts x samples), G = samples in a sequence's group.

The gradient estimator (Williams 1992) is  grad J = E[ (R(y) - b) grad log pi(y | x) ]; any b that does not
depend on y keeps it unbiased and a good b lowers its variance. Options (``baseline``):

- ``none``:          A_i = R_i
- ``batch_mean``:    A_i = R_i - mean_j R_j                    (all sequences of the batch)
- ``group_mean``:    A_i = R_i - mean_{j in g(i)} R_j          (the prompt's G samples, the notebook's seed;
                                                                 slightly biased: it includes R_i itself)
- ``leave_one_out``: A_i = R_i - 1/(G-1) sum_{j in g(i), j != i} R_j
                     (RLOO: Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!";
                     Ahmadian et al. 2024, "Back to Basics", eq. 7; equals G/(G-1) times ``group_mean``)
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from reinlm.algorithms.groups import group_sum
from reinlm.config import check_choice
from reinlm.errors import ReinlmError

Baseline = Literal["none", "batch_mean", "group_mean", "leave_one_out"]


def no_baseline(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """A_i = R_i."""
    return scores.clone()


def batch_mean_baseline(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - mean_j R_j."""
    return scores - scores.mean()


def group_mean_baseline(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - mean of R over i's group (i included)."""
    sums, counts = group_sum(scores, group_ids)
    return scores - sums / counts


def leave_one_out_baseline(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - (sum_{j in g(i)} R_j - R_i) / (G - 1)  (RLOO, Ahmadian et al. 2024 eq. 7)."""
    sums, counts = group_sum(scores, group_ids)
    if bool((counts < 2).any()):
        raise ReinlmError("baseline: leave_one_out needs at least 2 samples per prompt (group); got a group of 1. "
                          "Use samples_per_prompt >= 2, or baseline batch_mean / none.")
    return scores - (sums - scores) / (counts - 1)


BASELINES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "none": no_baseline,
    "batch_mean": batch_mean_baseline,
    "group_mean": group_mean_baseline,
    "leave_one_out": leave_one_out_baseline,
}


def reinforce_advantages(scores: torch.Tensor, group_ids: torch.Tensor,
                         baseline: Baseline = "group_mean") -> torch.Tensor:
    """Sequence advantages A (B,) for scores (B,) and group ids (B,) with the chosen ``baseline``."""
    check_choice("baseline", baseline, BASELINES)
    return BASELINES[baseline](scores.float(), group_ids)
