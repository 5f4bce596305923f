"""Token positions to read: pooling of ``[B, T, d]`` hidden states under a padding mask.

Grammar: ``last`` (last non-padding token), ``first``, ``middle``, ``mean`` (over non-padding
tokens), ``mean:content`` (mean excluding special tokens such as [CLS]/[SEP]/BOS),
``mean:span`` (mean over a caller-given character span of each text, e.g. completion tokens),
an integer (k-th non-padding token; negative counts from the end) and ``all`` (every
non-padding token, flattened with row and token ids). All are correct under left and right
padding because they index non-padding tokens, never raw positions.
"""

from __future__ import annotations

import torch

from reprlab.errors import SiteError

NAMED = ("last", "first", "middle", "mean", "mean:content", "mean:span", "all")


def parse_position(pos: str | int) -> str:
    """Canonical position name; raises :class:`SiteError` for anything outside the grammar."""
    text = str(pos).strip()
    if text in NAMED:
        return text
    try:
        return str(int(text))
    except ValueError:
        raise SiteError(
            f"unknown position {pos!r}; use last, first, middle, mean, mean:content, mean:span, "
            "all or an integer token index") from None


def parse_positions(spec: str | list | tuple) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    out = [parse_position(p) for p in items if str(p).strip()]
    if not out:
        raise SiteError("no position given; use e.g. last,mean")
    return list(dict.fromkeys(out))


def nth_index(mask: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Index (along T) of the k-th non-padding token of each row; negative k counts from the end.

    mask: [B, T] (0/1); k: int or [B] -> [B] long. Out-of-range k is clamped into the row.
    """
    m = mask.to(torch.long)
    n = m.sum(1)
    k = torch.as_tensor(k, device=mask.device).expand_as(n)
    k = torch.where(k < 0, n + k, k).clamp(min=0)
    k = torch.minimum(k, (n - 1).clamp(min=0))
    rank = m.cumsum(1) - 1  # rank of each non-padding token
    hit = (rank == k[:, None]) & (m == 1)
    return hit.to(torch.uint8).argmax(1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, position: str,
         content_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce ``hidden [B, T, d]`` to ``[B, d]`` at ``position`` (not ``all``).

    ``mask [B, T]`` marks real tokens. ``content_mask`` (for ``mean:content`` / ``mean:span``)
    marks the tokens to average; rows where it is empty fall back to ``mask``.
    """
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if position == "last":
        return hidden[rows, nth_index(mask, -1)]
    if position == "first":
        return hidden[rows, nth_index(mask, 0)]
    if position == "middle":
        n = mask.to(torch.long).sum(1)
        return hidden[rows, nth_index(mask, (n - 1) // 2)]
    if position.startswith("mean"):
        w = mask
        if position != "mean" and content_mask is not None:
            w = torch.where(content_mask.sum(1, keepdim=True) > 0, content_mask, mask)
        w = w.to(hidden.dtype).unsqueeze(-1)
        return (hidden * w).sum(1) / w.sum(1).clamp(min=1)
    if position == "all":
        raise ValueError("use flatten() for position 'all'")
    return hidden[rows, nth_index(mask, int(position))]


def flatten(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All non-padding tokens: ``[n_tokens, d]`` and their ``(row, token)`` ids ``[n_tokens, 2]``.

    Token ids count non-padding tokens from 0, so they do not depend on the padding side.
    """
    m = mask.bool()
    rank = m.to(torch.long).cumsum(1) - 1
    rows, cols = m.nonzero(as_tuple=True)
    ids = torch.stack([rows, rank[rows, cols]], 1)
    return hidden[rows, cols], ids


def check_token_position(position: int, lengths: list[int]) -> None:
    """:class:`ConfigError` (one line) when ``position`` (negative counts from the end) is
    outside a text of one of ``lengths`` tokens, instead of an index error or a silent clamp."""
    from reprlab.errors import ConfigError

    for n in lengths:
        if not -n <= position < n:
            raise ConfigError(f"--position {position} is out of range for a text of {n} "
                              f"tokens; give {-n} to {n - 1}")
