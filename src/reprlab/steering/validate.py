"""Causal validation of a direction: sweep coefficients, measure, plot, report.

A probe shows a concept is *readable* at a layer; steering along its direction and watching a
later readout, the model's answers and its behaviour elsewhere shows whether the model *uses*
it (Marks & Tegmark 2023; Rimsky et al. 2024). :func:`validate` returns numbers with 95%
bootstrap intervals over examples; :func:`run_validation` writes a run directory
(``results.json``, ``dose_response.csv``, PNG dose–response plots, ``report.html``, manifest).
:func:`validate_probe_run` is the entry point the probe workflow uses for ``--validate``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from reprlab.errors import ConfigError, DataError
from reprlab.sites import resolve_sites
from reprlab.steering import metrics as M
from reprlab.steering.operators import parse_coeffs
from reprlab.steering.readout import Readout, load_readouts, pick, readout_from_probe
from reprlab.steering.vector import SteeringVector

if TYPE_CHECKING:
    from reprlab.models import LoadedModel
    from reprlab.report import RunDir

logger = logging.getLogger(__name__)

#: metric name -> (plot group, y-axis label)
METRIC_INFO = {
    "readout_score": ("readout", "probe score (logit)"),
    "readout_shift": ("readout", "probe score shift vs. unsteered"),
    "readout_prob": ("readout", "mean P(positive) from probe"),
    "answer_logit_diff": ("answers", "log p(positive) - log p(negative)"),
    "answer_prob": ("answers", "P(positive answer | the two)"),
    "answer_accuracy": ("answers", "greedy answer = the known answer"),
    "answer_rejected": ("answers", "greedy answer = the rejected one"),
    "delta_loss": ("side_effects", "change in loss on neutral text (nats)"),
    "kl_next": ("side_effects", "KL(next token: unsteered || steered)"),
    "final_drift": ("side_effects", "1 - cos(final block, unsteered)"),
}


def _summarise(per_coeff: Mapping[float, torch.Tensor], seed: int) -> dict[str, Any]:
    coeffs = list(per_coeff)
    stats = [M.mean_ci(per_coeff[c], seed=seed) for c in coeffs]
    means = [s[0] for s in stats]
    return {"coeffs": coeffs, "mean": means, "lo": [s[1] for s in stats],
            "hi": [s[2] for s in stats], "n": int(next(iter(per_coeff.values())).numel()),
            "spearman": M.spearman(coeffs, means)}


#: the coherence guard: a steered model whose perplexity on neutral text rose more than this
#: factor over the unsteered one has fallen apart (the preference trainer's threshold)
COHERENCE_RATIO = 3.0

#: coefficient units: "unit" (× unit direction), "raw" (× the vector's raw scale), "sd" (× the
#: standard deviation of the activations' projection on the direction at the site)
COEFF_UNITS = ("unit", "raw", "sd")

#: metric group -> heading on the report page
GROUP_TITLES = {"readout": "probe readout", "answers": "answer probabilities",
                "side_effects": "side effects on neutral text"}


def projection_sd(lm: LoadedModel, vector: SteeringVector, site: str, texts: Sequence[str],
                  batch_size: int = 16, position: str | None = None,
                  threads: int | None = None) -> float:
    """Standard deviation over ``texts`` of the unsteered activations at ``site`` projected on
    the vector's unit direction (pooled at ``position``, default the vector's): the natural
    unit for steering coefficients, since one unit then moves the site as far as the data
    spread along that direction."""
    from reprlab.steering.fit import collect

    pos = position or getattr(vector, "position", None) or "mean"
    if pos in ("all", "mean:span"):
        pos = "mean"
    h = collect(lm, list(texts), [site], pos, batch_size, progress=False,
                threads=threads)[site].double()
    u = vector.direction(site).double()
    proj = h @ (u / u.norm())
    sd = float(proj.std()) if len(proj) > 1 else 0.0
    if not sd > 0:
        raise DataError(f"the activations at {site} do not vary along the direction over "
                        f"{len(texts)} texts; pass more texts or use --unit unit")
    return sd


def validate(lm: LoadedModel, vector: SteeringVector, site: str, coeffs: Any, *,
             texts: Sequence[str] | None = None, readout: Readout | None = None,
             pairs: Any = None, neutral: Sequence[str] | None = None,
             side_effects: bool = True, op: str = "add", unit: str = "unit",
             scope: str = "all", preserve_norm: bool = False, batch_size: int = 16,
             seed: int = 0, progress: bool = True, allow_other_model: bool = False,
             report: RunDir | None = None, threads: int | None = None,
             answers: Any = None) -> dict[str, Any]:
    """Sweep ``coeffs`` at ``site`` and measure what changes.

    - ``texts`` + ``readout``: readout shift (probe score at the same or a later site).
    - ``pairs`` (``ContrastPairs`` or ``(positive, negative)``; causal LMs): log-probability
      difference and probability of the positive continuation after the shared prompt.
    - ``answers`` (a dataset with known answers: labeled with ``answers``, or preference
      triples whose chosen completion is the right answer; causal LMs): the share of greedy
      answers equal to the known one (and, for triples, to the rejected one), and whether
      the steered model stays coherent (neutral-text perplexity at most
      :data:`COHERENCE_RATIO` times the unsteered one).
    - ``side_effects``: loss change and next-token KL on ``neutral`` texts (encoders: drift of
      the last block).

    ``unit``: ``"unit"`` (coefficient × unit direction), ``"raw"`` (× the vector's raw scale) or
    ``"sd"`` (× :func:`projection_sd` on ``texts`` or the neutral texts, so that a coefficient
    of 1 moves the site by one standard deviation of the data along the direction and −8…8
    spans the readout's curve instead of saturating it).

    With ``report`` (a :class:`~reprlab.report.RunDir`), adds plots and a table to it.
    ``threads``: torch threads for the forwards (None: :func:`reprlab._threads.for_forward`'s
    choice per batch, or ``REPRLAB_THREADS``); the caller's count is restored afterwards.
    """
    values = parse_coeffs(coeffs)
    if unit not in COEFF_UNITS:
        raise ConfigError(f"unknown unit {unit!r}; use one of {', '.join(COEFF_UNITS)}")
    if 0.0 not in values:
        logger.info("coefficient 0 (no steering) not in the sweep; shifts are against the "
                    "unsteered model anyway")
    (resolved,) = resolve_sites(lm, site)
    site = resolved.name
    vector.check_model(lm, strict=not allow_other_model)
    vector.direction(site)
    unit_sd = None
    if unit == "sd":
        unit_sd = projection_sd(lm, vector, site, list(texts or neutral or M.NEUTRAL_TEXTS),
                                batch_size, threads=threads)
    factor = unit_sd if unit_sd is not None else 1.0
    applied = [float(c * factor) for c in values]

    def by_coeff(per: Mapping[float, Any]) -> dict[float, Any]:
        """Results keyed by the applied coefficients -> keyed by the requested ones."""
        return {c: per[a] for c, a in zip(values, applied, strict=True)}

    kw = dict(op=op, unit="unit" if unit == "sd" else unit, scope=scope,
              preserve_norm=preserve_norm, threads=threads)
    metrics: dict[str, dict[str, Any]] = {}
    if readout is not None:
        if not texts:
            raise DataError("readout shift needs texts to run the model on; pass texts/--data")
        (r_site,) = resolve_sites(lm, readout.site)
        if r_site.layer is not None and resolved.layer is not None and \
                r_site.layer < resolved.layer:
            raise ConfigError(f"the readout at {readout.site} comes before the steered site "
                              f"{site}; read at the same or a later layer")
        base = M.readout_shift(lm, vector, site, readout, texts, [0.0], batch_size, False,
                               op="add", threads=threads)[0.0]
        scores = by_coeff(M.readout_shift(lm, vector, site, readout, texts, applied, batch_size,
                                          progress, **kw))
        metrics["readout_score"] = _summarise(scores, seed)
        metrics["readout_shift"] = _summarise({c: s - base for c, s in scores.items()}, seed)
        metrics["readout_prob"] = _summarise({c: torch.sigmoid(s) for c, s in scores.items()},
                                             seed)
    if pairs is not None:
        pos, neg = (pairs.positive, pairs.negative) if hasattr(pairs, "positive") else pairs
        if not lm.is_causal:
            logger.info("answer metrics skipped: %s is not a causal LM", lm.name)
        else:
            diff = by_coeff(M.answer_shift(lm, vector, site, pos, neg, applied, batch_size,
                                           progress, **kw))
            metrics["answer_logit_diff"] = _summarise(diff, seed)
            metrics["answer_prob"] = _summarise({c: torch.sigmoid(d) for c, d in diff.items()},
                                                seed)
    if answers is not None:
        from reprlab.answers import known_answers

        prompts, right, chat = known_answers(answers)
        acc = M.answer_accuracy(lm, vector, site, prompts, right, applied, chat=chat,
                                batch_size=batch_size, progress=progress, **kw)
        metrics["answer_accuracy"] = _summarise(by_coeff(acc), seed)
        if hasattr(answers, "rejected"):
            rej = M.answer_accuracy(lm, vector, site, prompts, list(answers.rejected), applied,
                                    chat=chat, batch_size=batch_size, progress=False, **kw)
            metrics["answer_rejected"] = _summarise(by_coeff(rej), seed)
    if side_effects:
        fx = M.side_effects(lm, vector, site, list(neutral or M.NEUTRAL_TEXTS), applied,
                            batch_size, progress, **kw)
        for name, per in fx.items():
            metrics[name] = _summarise(by_coeff(per), seed)
    if not metrics:
        raise ConfigError("nothing to measure: give a readout with texts, contrast pairs, or "
                          "keep side effects on")
    coherent = None
    if "delta_loss" in metrics:
        coherent = [bool(math.exp(m) <= COHERENCE_RATIO)
                    for m in metrics["delta_loss"]["mean"]]
    results = {"coherent": coherent, "coherence_ratio": COHERENCE_RATIO,
               "site": site, "coeffs": values, "op": op, "unit": unit, "scope": scope,
               "unit_sd": unit_sd, "applied_coeffs": applied, "n_texts": len(texts or []),
               "preserve_norm": preserve_norm, "scale": vector.scales[site],
               "readout_site": readout.site if readout is not None else None,
               "metrics": metrics, "ci": "95% percentile bootstrap over examples (2000 draws)"}
    if report is not None:
        add_to_report(report, results)
    return results


def rows_of(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Long-format rows ``metric, coeff, mean, lo, hi, n`` for CSV and tables."""
    rows = []
    for name, m in results["metrics"].items():
        for c, mean, lo, hi in zip(m["coeffs"], m["mean"], m["lo"], m["hi"], strict=True):
            rows.append({"metric": name, "coeff": c, "mean": mean, "lo": lo, "hi": hi,
                         "n": m["n"]})
    return rows


def unit_label(results: Mapping[str, Any]) -> str:
    """What one coefficient unit means, for axis labels and notes."""
    from reprlab.report.fmt import num

    unit = results.get("unit", "unit")
    if unit == "sd" and results.get("unit_sd") is not None:
        return (f"sd of the projection at {results['site']} (1 sd = "
                f"{num(results['unit_sd'], 3)} along the unit direction)")
    return {"unit": "× unit direction", "raw": "× raw vector norm"}.get(unit, unit)


def causal_headline(results: Mapping[str, Any]) -> str:
    """The page's top line: what steering did to the readout (or the answers), with its
    interval and rank correlation, and the side effect at the largest coefficient."""
    from reprlab.report.fmt import num

    m = results["metrics"]
    c = results["coeffs"]
    unit = "sd" if results.get("unit") == "sd" else ""
    main = next((k for k in ("readout_score", "answer_logit_diff") if k in m), None)
    parts = []
    if main is not None:
        e = m[main]
        what = (f"the probe readout at {results['readout_site']}" if main == "readout_score"
                else "log p(positive) − log p(negative) of the answers")
        rho = e["spearman"]
        verdict = ("moves monotonically with the coefficient" if abs(rho) > 0.9 else
                   "moves with the coefficient" if abs(rho) > 0.5 else
                   "does not follow the coefficient")
        parts.append(
            f"Steering {results['site']} along the direction: {what} {verdict} (Spearman "
            f"{rho:+.2f}), from {num(e['mean'][0], 3)} [{num(e['lo'][0], 3)}, "
            f"{num(e['hi'][0], 3)}] at {c[0]:+g}{unit} to {num(e['mean'][-1], 3)} "
            f"[{num(e['lo'][-1], 3)}, {num(e['hi'][-1], 3)}] at {c[-1]:+g}{unit}")
        if "readout_prob" in m:
            p = m["readout_prob"]["mean"]
            parts[-1] += f"; P(positive) {num(p[0], 2)} → {num(p[-1], 2)}"
    side = next((k for k in ("delta_loss", "final_drift") if k in m), None)
    if side is not None:
        e = m[side]
        worst = max(range(len(c)), key=lambda i: abs(c[i]))
        label = {"delta_loss": "loss on neutral text changes by",
                 "final_drift": "final-block drift on neutral text is"}[side]
        parts.append(f"side effect: {label} {num(e['mean'][worst], 3)} at {c[worst]:+g}{unit}")
    n, total = results.get("n_texts"), results.get("n_texts_total")
    size = f"a sample of {n} of {total} texts" if n and total and total > n else f"{n} texts"
    tail = f" ({size}; 95% bootstrap intervals)." if n else "."
    return "; ".join(parts) + tail if parts else summary_line(results)


def add_to_report(run: RunDir, results: Mapping[str, Any], prefix: str = "") -> None:
    """Dose–response plots (one PNG per metric group), a CSV and a summary table.

    ``prefix`` names the files (``steer_dose_response_readout.png``) when the steering
    section joins another workflow's page; headings are always plain words.
    """
    from reprlab.report.fmt import num
    from reprlab.report.plots import line_with_band, new_figure

    groups: dict[str, list[str]] = {}
    for name in results["metrics"]:
        groups.setdefault(METRIC_INFO.get(name, ("other", name))[0], []).append(name)
    where = (f"steering {results['site']}, read at {results['readout_site']}"
             if results.get("readout_site") else f"steering {results['site']}")
    for group, names in groups.items():
        fig, axes = new_figure(4.2 * len(names), 3.6, ncols=len(names), squeeze=False,
                               layout="constrained")
        for ax, name in zip(axes[0], names, strict=True):
            m = results["metrics"][name]
            line_with_band(ax, m["coeffs"], m["mean"], m["lo"], m["hi"], label=name)
            ax.axvline(0, color="#888", lw=0.8, ls=":")
            ax.set_xlabel(f"coefficient ({results['op']}; "
                          f"{'sd' if results['unit'] == 'sd' else results['unit']}) "
                          f"at {results['site']}")
            ax.set_ylabel(METRIC_INFO.get(name, ("", name))[1])
            ax.set_title(name.replace("_", " "))
        title = GROUP_TITLES.get(group, group.replace("_", " "))
        run.figure(fig, f"{prefix}dose_response_{group}.png",
                   caption=f"{title[0].upper()}{title[1:]} vs. steering coefficient ({where}); "
                           f"coefficient unit: {unit_label(results)}; bands: {results['ci']}.",
                   title=f"Steering: {title}")
    rows = rows_of(results)
    run.write_csv(f"{prefix}dose_response.csv", rows)
    c = results["coeffs"]
    def row(n: str, m: Mapping[str, Any]) -> dict[str, Any]:
        scale = max(abs(v) for v in m["mean"])  # float noise at 0 prints as 0
        return {"metric": n.replace("_", " "), f"at {c[0]:+g}": num(m["mean"][0], 3, scale),
                "at 0": num(m["mean"][c.index(0.0)], 3, scale) if 0.0 in c else "–",
                f"at {c[-1]:+g}": num(m["mean"][-1], 3, scale),
                "spearman(coeff, mean)": f"{m['spearman']:+.2f}", "n": m["n"]}

    summary = [row(n, m) for n, m in results["metrics"].items()]
    n = results.get("n_texts")
    sample = f" on {n} texts" if n else ""
    total = results.get("n_texts_total")
    if n and total and total > n:
        sample = f" on a seeded sample of {n} of the {total} texts"
    run.table(f"Steering at {results['site']}: dose–response", summary,
              note=f"{where}{sample}; coefficients {', '.join(f'{v:g}' for v in c)} in units "
                   f"of {unit_label(results)}; {results['ci']}.")


def run_validation(lm: LoadedModel, vector: SteeringVector, site: str, coeffs: Any, out: str | Path,
                   *, config: Mapping[str, Any] | None = None,
                   inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`validate` and write a run directory at ``out``; returns the results.

    ``inputs`` (e.g. ``{"data": {"name": spec, "hash": ..., "rows": n}}``) are recorded in the
    manifest and shown under the page title; missing entries are left out, never ``None``.
    """
    from reprlab.report import RunDir

    given = {k: v for k, v in (inputs or {}).items() if v is not None}
    source = f"{vector.method} direction" + (f" from {vector.source}" if vector.source else "")
    run = RunDir.create(out, workflow="steer-validate", config=dict(config or {}),
                        inputs={"model": lm.identity(), "vector": source, **given},
                        seed=kwargs.get("seed", 0))
    results = validate(lm, vector, site, coeffs, report=run, **kwargs)
    run.inputs["steered site"] = results["site"]
    if results.get("readout_site"):
        run.inputs["readout site"] = results["readout_site"]
    run.finish(results, title=f"reprlab steering validation: {lm.name} at {results['site']}",
               summary=causal_headline(results),
               extra_manifest={"data": given.get("data"), "pairs": given.get("pairs"),
                               "steered_site": results["site"],
                               "readout_site": results.get("readout_site")})
    return results


def summary_line(results: Mapping[str, Any]) -> str:
    from reprlab.report.fmt import num

    parts = []
    for name, m in results["metrics"].items():
        parts.append(f"{name}: {num(m['mean'][0], 3)} → {num(m['mean'][-1], 3)} "
                     f"(coeff {m['coeffs'][0]:g} → {m['coeffs'][-1]:g})")
    return "; ".join(parts)


# -- probe workflow entry point -------------------------------------------------------------
def _readouts_of(source: Any) -> tuple[dict[str, Readout], dict[str, Any]]:
    """Readouts and results dict from a run directory, a sweep result or a mapping of probes."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        results = {}
        if (p / "results.json").exists():
            from reprlab.io import read_json

            results = read_json(p / "results.json")
        return load_readouts(p), results
    linear = getattr(source, "linear_probes", None)  # a reprlab.probes SweepResult
    probes = linear() if callable(linear) else getattr(source, "probes", source)
    results = source if isinstance(source, Mapping) and "probes" not in source else {}
    if hasattr(source, "results"):
        results = dict(source.results) if isinstance(source.results, Mapping) else {}
    elif hasattr(source, "to_dict"):
        results = source.to_dict()
    if isinstance(source, Mapping) and "probes" in source:
        probes = source["probes"]
    if not isinstance(probes, Mapping):
        raise ConfigError(f"cannot read probes from a {type(source).__name__}; pass a probe "
                          "run directory or a mapping site -> probe")
    out = {}
    for s, pr in probes.items():
        try:
            out[str(s)] = readout_from_probe(pr, site=str(s))
        except Exception:  # noqa: BLE001 - entries that are not probes (metrics)
            continue
    if not out:
        raise ConfigError("no probes with directions found in the sweep result")
    return out, results


def best_site(results: Mapping[str, Any], readouts: Mapping[str, Readout]) -> str:
    """The best layer a probe sweep reported (``best_site``/``best_layer``/``best``)."""
    for key in ("best_site", "best_layer", "best"):
        v = results.get(key) if isinstance(results, Mapping) else None
        if isinstance(v, Mapping):
            v = v.get("site") or v.get("name")
        if isinstance(v, int):
            v = f"layers.{v}"
        if isinstance(v, str) and v in readouts:
            return v
    getter = getattr(results, "best_site", None)
    if isinstance(getter, str) and getter in readouts:
        return getter
    raise ConfigError("the probe results do not name a best layer; pass the site to steer "
                      f"(one of {', '.join(list(readouts)[:8])})")


def sample_texts(data: Any, n: int | None, seed: int = 0) -> tuple[list[str], int]:
    """A seeded sample of ``n`` texts of ``data`` (texts or a labeled dataset; balanced over
    labels when it has them), in their original order; ``n`` None/0 keeps all. Returns
    ``(texts, total)``."""
    texts = list(getattr(data, "texts", data) or [])
    total = len(texts)
    if not n or n >= total:
        return texts, total
    g = torch.Generator().manual_seed(seed)
    labels = getattr(data, "labels", None)
    if labels is not None and len(labels) == total:
        lab = torch.as_tensor(list(labels))
        classes = lab.unique()
        picked = []
        for k, c in enumerate(classes):
            idx = (lab == c).nonzero().squeeze(1)
            want = n // len(classes) + (1 if k < n % len(classes) else 0)
            picked.append(idx[torch.randperm(len(idx), generator=g)[:want]])
        chosen = torch.cat(picked)
    else:
        chosen = torch.randperm(total, generator=g)[:n]
    return [texts[i] for i in chosen.sort().values.tolist()], total


def validate_probe_run(probe_run: Any, lm: LoadedModel, data: Any, coeffs: Any = "-8:8:9", *,
                       site: str | None = None, readout_site: str | None = None,
                       report: RunDir | None = None, max_texts: int | None = 200,
                       **kwargs: Any) -> dict[str, Any]:
    """Readout-shift validation of a probe direction (the probe workflow's ``--validate``).

    ``probe_run`` is a probe run directory, a sweep result exposing ``.probes`` (site ->
    probe) or such a mapping. The direction of the probe at ``site`` (default: the sweep's best
    layer) is added at that site with each coefficient; the probe at ``readout_site`` (default
    the same site) scores ``data`` (a ``LabeledDataset`` or texts): a seeded sample of
    ``max_texts`` of them (balanced over labels; None/0: all), since every text is run once per
    coefficient. ``unit="sd"`` (what ``reprlab probe --validate`` uses) puts coefficients in
    standard deviations of the projection at the site. With ``report`` the plots and table are
    added to that run's report (file names prefixed ``steer_``).
    """
    readouts, results = _readouts_of(probe_run)
    site = site or best_site(results, readouts)
    r_steer = pick(readouts, site)
    r_read = pick(readouts, readout_site or site)
    texts, total = sample_texts(data, max_texts, kwargs.get("seed", 0))
    if not texts:
        raise DataError("validation needs the texts the probes were trained on; pass data")
    vector = SteeringVector({site: r_steer.unit}, {site: r_steer.scale or 1.0},
                            model={}, method="probe", position=r_steer.position,
                            source=str(probe_run) if isinstance(probe_run, (str, Path)) else "")
    kwargs.setdefault("side_effects", True)
    out = validate(lm, vector, site, coeffs, texts=texts, readout=r_read, report=None,
                   **kwargs)
    out["n_texts_total"] = total
    if report is not None:
        add_to_report(report, out, prefix="steer_")
    return out
