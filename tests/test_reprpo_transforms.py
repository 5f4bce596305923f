"""Hidden-state transforms: each one's defining property."""

from __future__ import annotations

import pytest
import torch

from reprlab.errors import ConfigError
from reprlab.prefs.transforms import (
    ETHER,
    HRA,
    Orthogonal,
    SupressedHS,
    build_transform,
)

D = 16


def dense(mod, d=D):
    """The matrix M with mod(x) = x Mᵀ, i.e. column j = mod(e_j)."""
    with torch.no_grad():
        return mod(torch.eye(d)).T


def _perturb(mod, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_ether_is_block_diagonal_reflection():
    m = ETHER(D, n_blocks=4)
    h = dense(m)
    eye = torch.eye(D)
    torch.testing.assert_close(h.T @ h, eye, atol=1e-5, rtol=0)   # orthogonal
    torch.testing.assert_close(h @ h, eye, atol=1e-5, rtol=0)     # involutory: a reflection
    assert torch.linalg.det(h).item() == pytest.approx(1.0)       # (−1)^4
    off = h.clone()
    for b in range(4):
        off[4 * b:4 * b + 4, 4 * b:4 * b + 4] = 0
    assert off.abs().max() < 1e-6                                 # block-diagonal
    assert (h - eye).abs().max() > 0.1                            # not the identity
    # each block reflects its own vector: H_b u_b = −u_b
    u = m.u.detach()
    x = torch.zeros(D)
    x[:4] = u[0]
    torch.testing.assert_close(m(x)[:4], -u[0])


def test_etherplus_identity_at_init_and_trains():
    m = ETHER(D, n_blocks=2, plus=True)
    x = torch.randn(5, D)
    torch.testing.assert_close(m(x), x, atol=1e-6, rtol=0)
    m(x).pow(2).sum().backward()
    assert m.v.grad.abs().sum() > 0


def test_hra_orthogonal_and_identity_at_init():
    m = HRA(D, r=4)
    torch.testing.assert_close(dense(m), torch.eye(D), atol=1e-5, rtol=0)
    _perturb(m)
    h = dense(m)
    torch.testing.assert_close(h.T @ h, torch.eye(D), atol=1e-5, rtol=0)
    assert (h - torch.eye(D)).abs().max() > 0.1
    with pytest.raises(ConfigError, match="even"):
        HRA(D, r=3)


def test_orthogonal_stays_orthogonal_while_training():
    m = Orthogonal(D)
    torch.testing.assert_close(dense(m), torch.eye(D), atol=1e-6, rtol=0)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    target = torch.randn(D, D)
    for _ in range(20):
        loss = (m(torch.eye(D)) - target).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    h = dense(m)
    assert (h - torch.eye(D)).abs().max() > 0.05
    torch.testing.assert_close(h.T @ h, torch.eye(D), atol=1e-5, rtol=0)


def test_supressed_masks_by_projected_change():
    g = torch.Generator().manual_seed(0)
    widths = {"layers.1": D, "layers.2": D, "layers.3": D}
    states = {s: torch.randn(3, D, generator=g) for s in widths}
    full = torch.randn(40, D, generator=g)  # V > d, full rank: P = I
    t = SupressedHS(widths, full, eps=0.1)
    out = t(states)
    assert list(out) == ["layers.2", "layers.3"]
    for prev, cur in (("layers.1", "layers.2"), ("layers.2", "layers.3")):
        keep = (states[cur] - states[prev]) > 0.1
        torch.testing.assert_close(out[cur], states[cur] * keep)
    low = torch.randn(4, D, generator=g)  # rank 4 < d: mask from the projected change
    t = SupressedHS(widths, low, eps=0.0)
    p = torch.linalg.pinv(low) @ low
    delta = (states["layers.2"] - states["layers.1"]) @ p.T
    torch.testing.assert_close(t(states)["layers.2"], states["layers.2"] * (delta > 0))
    assert not list(t.parameters())


def test_builder_errors_and_width_check():
    widths = {"layers.1": D}
    t = build_transform("ether", widths, n_blocks=4)
    with pytest.raises(ConfigError, match="width 16 but the model's states there have width 8"):
        t({"layers.1": torch.randn(2, 8)})
    with pytest.raises(ConfigError, match="divides the width"):
        build_transform("ether", {"layers.1": 10}, n_blocks=4)
    with pytest.raises(ConfigError, match="unknown transform"):
        build_transform("fancy", widths)
    with pytest.raises(ConfigError, match="at least two sites"):
        build_transform("supressed", widths, unembed=torch.randn(20, D))
    with pytest.raises(ConfigError, match="width"):
        build_transform("supressed", {"a": D, "b": 8}, unembed=torch.randn(20, D))
    x = {"layers.1": torch.randn(2, D)}
    for name in ("none", "etherplus", "hra", "orthogonal"):
        torch.testing.assert_close(build_transform(name, widths)(x)["layers.1"], x["layers.1"],
                                   atol=1e-5, rtol=0)
