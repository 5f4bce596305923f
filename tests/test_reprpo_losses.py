"""Representation preference losses: signs, bounds, finite gradients and option checks."""

from __future__ import annotations

import math

import pytest
import torch

from reprlab.errors import ConfigError
from reprlab.prefs.repr_losses import ALIGN_METHODS, REPR_LOSSES, ReprInputs, make_options

B, D = 4, 16
SITES = ("layers.1", "layers.2")


def ref_states(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rc = {s: torch.randn(B, D, generator=g) for s in SITES}
    rr = {s: torch.randn(B, D, generator=g) for s in SITES}
    return rc, rr


def inputs(pc, pr, rc, rr, rho: float = 0.0) -> ReprInputs:
    z = torch.zeros(B)
    return ReprInputs(pc, pr, rc, rr, logp_pi_cho=z + rho, logp_pi_rej=z.clone(),
                      logp_ref_cho=z.clone(), logp_ref_rej=z.clone())


def noisy_base(rc, rr, seed: int = 1, scale: float = 0.3):
    """A policy near the reference, with some orthogonal separation already."""
    g = torch.Generator().manual_seed(seed)
    pc = {s: rc[s] + scale * torch.randn(B, D, generator=g) for s in SITES}
    pr = {s: rr[s] + scale * torch.randn(B, D, generator=g) for s in SITES}
    return pc, pr


def widen(t: float, pc0, pr0, rc, rr):
    """t > 0 widens the chosen-rejected separation along the reference direction."""
    pc = {s: pc0[s] + 0.5 * t * (rc[s] - rr[s]) for s in SITES}
    pr = {s: pr0[s] - 0.5 * t * (rc[s] - rr[s]) for s in SITES}
    return pc, pr


def reroute(t: float, pc0, pr0, rc, rr):
    """t > 0 moves rejected states toward the reference chosen ones (t < 0: away)."""
    return dict(pc0), {s: pr0[s] + t * (rc[s] - pr0[s]) for s in SITES}


def _away(x, anchor, t):
    """Turn ``x`` away from ``anchor``'s direction by adding |t|·‖x‖ orthogonal to it."""
    g = torch.Generator().manual_seed(7)
    v = torch.randn(x.shape, generator=g)
    a = anchor / anchor.norm(dim=-1, keepdim=True)
    v = v - (v * a).sum(-1, keepdim=True) * a
    v = v / v.norm(dim=-1, keepdim=True)
    return x + abs(t) * x.norm(dim=-1, keepdim=True) * v


def cross_model(t: float, pc0, pr0, rc, rr):
    """t > 0 turns rejected states away from the reference rejected; t < 0 does that to the
    chosen states instead."""
    if t >= 0:
        return dict(pc0), {s: _away(pr0[s], rr[s], t) for s in SITES}
    return {s: _away(pc0[s], rc[s], t) for s in SITES}, dict(pr0)


def rank_move(t: float, pc0, pr0, rc, rr):
    """t > 0 raises the chosen state's least likely pseudo-probability dimension and lowers
    the rejected's (the loss's own notion of "chosen more likely, rejected less")."""
    pc, pr = {}, {}
    for s in SITES:
        kc = rc[s].softmax(-1).argmin(-1)
        kr = rr[s].softmax(-1).argmin(-1)
        pc[s] = rc[s] + t * torch.nn.functional.one_hot(kc, D).float()
        pr[s] = rr[s] - t * torch.nn.functional.one_hot(kr, D).float()
    return pc, pr


CASES = [
    ("mse", {}, reroute, True),
    ("prefvec", {"alpha": 0.0}, widen, True),
    ("rank", {"alpha": 0.0}, rank_move, False),
    ("topk", {"k": 8}, widen, True),
] + [
    ("innerdpo", {"align": a, "trust_region": 0.0},
     cross_model if a == "cosine_cross_model" else widen, a != "cosine_cross_model")
    for a in ALIGN_METHODS
] + [("innerdpo", {"align": "pars_ratio", "trust_region": 0.0, "loss_type": "ipo",
                   "beta_hidden": 0.1}, widen, True)]


def _loss(name, opts, pc, pr, rc, rr, rho=0.0):
    spec = REPR_LOSSES[name]
    return spec.fn(inputs(pc, pr, rc, rr, rho), make_options(name, **opts))


@pytest.mark.parametrize("name,opts,move,noisy", CASES,
                         ids=[f"{c[0]}-{c[1].get('align', '')}{c[1].get('loss_type', '')}"
                              for c in CASES])
def test_sign_preferred_move_lowers_loss(name, opts, move, noisy):
    rc, rr = ref_states()
    pc0, pr0 = noisy_base(rc, rr) if noisy else (dict(rc), dict(rr))
    vals = {t: float(_loss(name, opts, *move(t, pc0, pr0, rc, rr), rc, rr).loss)
            for t in (-0.3, -0.1, 0.0, 0.1, 0.3)}
    ts = sorted(vals)
    # strictly decreasing in t: each step toward the preferred configuration lowers the loss
    for a, b in zip(ts, ts[1:]):
        assert vals[b] < vals[a] - 1e-6, (name, opts, vals)


@pytest.mark.parametrize("name,opts", [(c[0], c[1]) for c in CASES] + [
    ("innerdpo", {"align": "pars_ratio", "detach_rejected": True}),
    ("topk", {"detach_rejected": True}),
    ("prefvec", {}), ("rank", {}), ("innerdpo", {}),
])
def test_gradient_finite_at_reference(name, opts):
    rc, rr = ref_states()
    rr["layers.1"][0] = rc["layers.1"][0]  # one row with no reference separation at all
    pc = {s: rc[s].clone().requires_grad_(True) for s in SITES}
    pr = {s: rr[s].clone().requires_grad_(True) for s in SITES}
    logp = torch.zeros(B, requires_grad=True)
    x = ReprInputs(pc, pr, rc, rr, logp_pi_cho=logp, logp_pi_rej=torch.zeros(B),
                   logp_ref_cho=torch.zeros(B), logp_ref_rej=torch.zeros(B))
    out = REPR_LOSSES[name].fn(x, make_options(name, **opts))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [pc[s].grad for s in SITES] + [pr[s].grad for s in SITES]
    for g in grads:
        assert g is None or torch.isfinite(g).all()
    assert any(g is not None and g.abs().sum() > 0 for g in grads) or name == "rank"


def _descend(name, opts, steps=300, lr=0.05, rho_free=True):
    """Minimise the loss over the policy states (and ρ); returns the lowest loss seen."""
    rc, rr = ref_states(3)
    pc0, pr0 = noisy_base(rc, rr, seed=4, scale=0.1)
    pc = {s: pc0[s].clone().requires_grad_(True) for s in SITES}
    pr = {s: pr0[s].clone().requires_grad_(True) for s in SITES}
    lp = torch.zeros(B, requires_grad=True)
    opt = torch.optim.Adam([*pc.values(), *pr.values(), lp], lr=lr)
    best = math.inf
    for _ in range(steps):
        x = ReprInputs(pc, pr, rc, rr, logp_pi_cho=lp, logp_pi_rej=torch.zeros(B),
                       logp_ref_cho=torch.zeros(B), logp_ref_rej=torch.zeros(B))
        out = REPR_LOSSES[name].fn(x, make_options(name, **opts))
        assert torch.isfinite(out.loss)
        best = min(best, float(out.rows.detach().min()))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return best, rc, rr


@pytest.mark.parametrize("name,opts,bound", [
    ("innerdpo", {"align": "para_signed"}, 0.0),
    ("innerdpo", {"align": "logodds_noref", "loss_type": "ipo"}, 0.0),
    ("prefvec", {}, -1.0),
    ("rank", {}, 0.0),
    ("topk", {"k": 8, "margin": 2.0}, -2.0),
])
def test_bounded_below_where_claimed(name, opts, bound):
    best, _, _ = _descend(name, opts)
    assert best >= bound - 1e-5


def test_mse_bound():
    eps, alpha = 1e-4, 1.0
    best, rc, rr = _descend("mse", {"alpha": alpha, "eps": eps}, steps=200)
    ref = max(float(((rc[s] - rr[s]).pow(2).sum(-1) + eps ** 2).sqrt().max()) for s in SITES)
    assert (1 + alpha) * math.log(eps / ref) - 1e-4 <= best < 0


def test_topk_below_unit_slope_is_unbounded_and_refused():
    with pytest.raises(ConfigError, match="unbounded"):
        make_options("topk", alpha=0.1)
    best, _, _ = _descend("topk", {"alpha": 0.1, "allow_unbounded": True, "k": 8}, steps=300,
                          lr=0.5)
    assert best < -20  # keeps falling: the reason alpha < 1 is refused by default


def test_trust_region_makes_hidden_term_flat():
    rc, rr = ref_states()
    pc0, pr0 = noisy_base(rc, rr)
    far = [float(_loss("innerdpo", {"align": "pars_ratio", "trust_region": 1.0},
                       *widen(t, pc0, pr0, rc, rr), rc, rr).loss) for t in (5.0, 8.0)]
    assert far[0] == pytest.approx(far[1])
    free = [float(_loss("innerdpo", {"align": "pars_ratio", "trust_region": 0.0},
                        *widen(t, pc0, pr0, rc, rr), rc, rr).loss) for t in (5.0, 8.0)]
    assert free[1] < free[0]


def test_detach_rejected_stops_rejected_gradient():
    rc, rr = ref_states()
    pc0, pr0 = noisy_base(rc, rr)
    for name in ("innerdpo", "topk"):
        pc = {s: pc0[s].clone().requires_grad_(True) for s in SITES}
        pr = {s: pr0[s].clone().requires_grad_(True) for s in SITES}
        _loss(name, {"detach_rejected": True}, pc, pr, rc, rr).loss.backward()
        assert all(pr[s].grad is None for s in SITES)
        assert all(pc[s].grad.abs().sum() > 0 for s in SITES)


@pytest.mark.parametrize("name,opts", [("prefvec", {"alpha": 1.0}),
                                       ("innerdpo", {"alpha": 0.5}),
                                       ("innerdpo", {"loss_type": "ipo"}), ("rank", {})])
def test_output_term_rewards_preferred_output_and_is_bounded(name, opts):
    """The research's PrefVec output term was α·log σ(−ρ): falling with ρ → −∞ is what it
    rewarded. Ours rises when the rejected completion gains probability."""
    rc, rr = ref_states()
    pc0, pr0 = noisy_base(rc, rr)
    vals = [float(_loss(name, opts, pc0, pr0, rc, rr, rho=r).loss) for r in (-10.0, 0.0, 2.0)]
    assert vals[0] > vals[1]
    if name == "rank":  # relu(−ρ) retains only: flat once the output is no worse than ref
        assert vals[1] == pytest.approx(vals[2])
    elif opts.get("loss_type") != "ipo":
        assert vals[1] > vals[2]
    huge = float(_loss(name, opts, pc0, pr0, rc, rr, rho=1e4).loss)
    assert math.isfinite(huge) and huge > -1.0 - 1e-6


def test_innerdpo_without_hidden_term_equals_dpo_and_ipo():
    """α = 0: exactly the output losses, DPO −log σ(βρ) and IPO (ρ − 1/2β)²."""
    rc, rr = ref_states()
    pc0, pr0 = noisy_base(rc, rr)
    g = torch.Generator().manual_seed(5)
    lp = [torch.randn(B, generator=g) * 3 for _ in range(4)]
    x = ReprInputs(pc0, pr0, rc, rr, *lp)
    rho = (lp[0] - lp[1]) - (lp[2] - lp[3])
    out = REPR_LOSSES["innerdpo"].fn(x, make_options("innerdpo", alpha=0.0, beta=0.3))
    want = -torch.nn.functional.logsigmoid(0.3 * rho)
    torch.testing.assert_close(out.rows, want)
    out = REPR_LOSSES["innerdpo"].fn(x, make_options("innerdpo", alpha=0.0, beta=0.3,
                                                     loss_type="ipo"))
    torch.testing.assert_close(out.rows, (rho - 1 / 0.6) ** 2)


def test_align_values_at_reference():
    """Methods documented as 0 at policy == reference are 0 there."""
    from reprlab.prefs.repr_losses.base import Geometry

    rc, rr = ref_states()
    s = SITES[0]
    g = Geometry.of(rc[s], rr[s], rc[s], rr[s], 1e-6)
    for name in ("pars_ratio", "cosine_cross_model", "direct_projection"):
        v = ALIGN_METHODS[name](g, rc[s], rr[s], rc[s], rr[s], 1e-6)
        torch.testing.assert_close(v, torch.zeros(B), atol=1e-4, rtol=0)
    v = ALIGN_METHODS["para_signed"](g, rc[s], rr[s], rc[s], rr[s], 1e-6)
    torch.testing.assert_close(v, (rc[s] - rr[s]).norm(dim=-1), atol=1e-4, rtol=1e-4)


def test_bad_options_one_line():
    with pytest.raises(ConfigError, match="does not apply to the mse loss"):
        make_options("mse", align="pars_ratio")
    with pytest.raises(ConfigError, match="alpha must be >= 0"):
        make_options("innerdpo", alpha=-0.1)
    with pytest.raises(ConfigError, match="unknown align method"):
        make_options("innerdpo", align="nope")
    assert make_options("innerdpo", align="pars-ratio").align == "pars_ratio"
    with pytest.raises(ConfigError, match="unknown representation loss"):
        make_options("dpo2")
    rc, rr = ref_states()
    with pytest.raises(ConfigError, match="sites"):
        ReprInputs(rc, {"x": rr[SITES[0]]}, rc, rr)


@pytest.mark.parametrize("align", sorted(ALIGN_METHODS))
def test_every_align_method_has_a_hidden_gradient_at_its_defaults_at_scale(align):
    """On states 50x the unit scale (‖Δr‖ ≈ 280, as in real models), near the reference, the
    hidden term's gradient is non-zero at the default trust region; the research's clamp of θ_h
    at 2 is flat there for the align methods whose θ_h is not relative to ‖Δr‖."""
    rc, rr = ref_states()
    pc0, pr0 = noisy_base(rc, rr)
    big = [{s: 50 * d[s] for s in SITES} for d in (pc0, pr0, rc, rr)]
    assert float((big[2]["layers.1"] - big[3]["layers.1"]).norm(dim=-1).min()) > 100
    pc = {s: big[0][s].clone().requires_grad_(True) for s in SITES}
    pr = {s: big[1][s].clone().requires_grad_(True) for s in SITES}
    out = REPR_LOSSES["innerdpo"].fn(inputs(pc, pr, big[2], big[3]),
                                     make_options("innerdpo", align=align))
    assert out.metrics["hidden_flat"] == 0.0
    hidden = out.rows - (-torch.nn.functional.logsigmoid(torch.zeros(B) * 0.1))
    grads = torch.autograd.grad(hidden.sum(), [*pc.values(), *pr.values()])
    assert all(float(g.norm(dim=-1).min()) > 0 for g in grads)
    theta = out.metrics["theta"]
    if align in ("para_signed", "para_orth_signed"):
        assert theta > 2.0  # the research's cap on θ_h at 2 would have held it flat


def test_a_binding_trust_region_is_reported_as_flat_rows():
    rc, rr = ref_states()
    pc0, pr0 = noisy_base(rc, rr)
    pc, pr = widen(5.0, pc0, pr0, rc, rr)
    pc = {s: v.clone().requires_grad_(True) for s, v in pc.items()}
    out = REPR_LOSSES["innerdpo"].fn(inputs(pc, pr, rc, rr),
                                     make_options("innerdpo", trust_region=1.0))
    assert out.metrics["hidden_flat"] == 1.0
    out = REPR_LOSSES["innerdpo"].fn(inputs(pc, pr, rc, rr),
                                     make_options("innerdpo", trust_region=0.0))
    assert out.metrics["hidden_flat"] == 0.0
