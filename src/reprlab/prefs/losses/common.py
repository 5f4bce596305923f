"""What every preference loss reads: per-pair log-probabilities of policy and reference.

Shapes: ``B`` preference pairs. Log-probabilities are **summed** over the completion tokens
(the prompt and padding are masked out); ``n_chosen`` / ``n_rejected`` count those tokens, so
that a loss can use the per-token mean (``aggregation="mean"``) instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("sum", "mean")


@dataclass(frozen=True)
class PairLogps:
    """Completion log-probabilities of a batch of pairs.

    chosen, rejected:         [B] policy log-probs, summed over completion tokens
    ref_chosen, ref_rejected: [B] the same under the reference (None for reference-free losses)
    n_chosen, n_rejected:     [B] completion token counts (float or int)
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    n_chosen: torch.Tensor
    n_rejected: torch.Tensor

    def aggregated(self, aggregation: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy (chosen, rejected) log-probs, each [B], summed or per-token mean."""
        return (aggregate(self.chosen, self.n_chosen, aggregation),
                aggregate(self.rejected, self.n_rejected, aggregation))

    def logratios(self, aggregation: str) -> tuple[torch.Tensor, torch.Tensor]:
        """log π/π_ref of chosen and rejected, each [B], summed or per-token mean."""
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError("this loss needs reference log-probs")
        c = aggregate(self.chosen - self.ref_chosen, self.n_chosen, aggregation)
        r = aggregate(self.rejected - self.ref_rejected, self.n_rejected, aggregation)
        return c, r

    def margin(self, aggregation: str) -> torch.Tensor:
        """Δ = (log π/π_ref)(chosen) − (log π/π_ref)(rejected), [B]."""
        c, r = self.logratios(aggregation)
        return c - r


def aggregate(summed: torch.Tensor, n_tokens: torch.Tensor, aggregation: str) -> torch.Tensor:
    """``summed`` [B] as is (``"sum"``) or divided by ``n_tokens`` [B] (``"mean"``)."""
    if aggregation == "sum":
        return summed
    if aggregation == "mean":
        return summed / n_tokens.to(summed.dtype).clamp(min=1.0)
    raise ValueError(f"unknown aggregation {aggregation!r}; use sum or mean")
