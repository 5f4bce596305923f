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


def validate(lm: LoadedModel, vector: SteeringVector, site: str, coeffs: Any, *,
             texts: Sequence[str] | None = None, readout: Readout | None = None,
             pairs: Any = None, neutral: Sequence[str] | None = None,
             side_effects: bool = True, op: str = "add", unit: str = "unit",
             scope: str = "all", preserve_norm: bool = False, batch_size: int = 16,
             seed: int = 0, progress: bool = True, allow_other_model: bool = False,
             report: RunDir | None = None) -> dict[str, Any]:
    """Sweep ``coeffs`` at ``site`` and measure what changes.

    - ``texts`` + ``readout``: readout shift (probe score at the same or a later site).
    - ``pairs`` (``ContrastPairs`` or ``(positive, negative)``; causal LMs): log-probability
      difference and probability of the positive continuation after the shared prompt.
    - ``side_effects``: loss change and next-token KL on ``neutral`` texts (encoders: drift of
      the last block).

    With ``report`` (a :class:`~reprlab.report.RunDir`), adds plots and a table to it.
    """
    values = parse_coeffs(coeffs)
    if 0.0 not in values:
        logger.info("coefficient 0 (no steering) not in the sweep; shifts are against the "
                    "unsteered model anyway")
    (resolved,) = resolve_sites(lm, site)
    site = resolved.name
    vector.check_model(lm, strict=not allow_other_model)
    vector.direction(site)
    kw = dict(op=op, unit=unit, scope=scope, preserve_norm=preserve_norm)
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
                               op="add")[0.0]
        scores = M.readout_shift(lm, vector, site, readout, texts, values, batch_size, progress,
                                 **kw)
        metrics["readout_score"] = _summarise(scores, seed)
        metrics["readout_shift"] = _summarise({c: s - base for c, s in scores.items()}, seed)
        metrics["readout_prob"] = _summarise({c: torch.sigmoid(s) for c, s in scores.items()},
                                             seed)
    if pairs is not None:
        pos, neg = (pairs.positive, pairs.negative) if hasattr(pairs, "positive") else pairs
        if not lm.is_causal:
            logger.info("answer metrics skipped: %s is not a causal LM", lm.name)
        else:
            diff = M.answer_shift(lm, vector, site, pos, neg, values, batch_size, progress, **kw)
            metrics["answer_logit_diff"] = _summarise(diff, seed)
            metrics["answer_prob"] = _summarise({c: torch.sigmoid(d) for c, d in diff.items()},
                                                seed)
    if side_effects:
        fx = M.side_effects(lm, vector, site, list(neutral or M.NEUTRAL_TEXTS), values,
                            batch_size, progress, **kw)
        for name, per in fx.items():
            metrics[name] = _summarise(per, seed)
    if not metrics:
        raise ConfigError("nothing to measure: give a readout with texts, contrast pairs, or "
                          "keep side effects on")
    results = {"site": site, "coeffs": values, "op": op, "unit": unit, "scope": scope,
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


def add_to_report(run: RunDir, results: Mapping[str, Any], prefix: str = "") -> None:
    """Dose–response plots (one PNG per metric group), a CSV and a summary table."""
    from reprlab.report.plots import line_with_band, new_figure

    groups: dict[str, list[str]] = {}
    for name in results["metrics"]:
        groups.setdefault(METRIC_INFO.get(name, ("other", name))[0], []).append(name)
    for group, names in groups.items():
        fig, axes = new_figure(4.2 * len(names), 3.4, ncols=len(names), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            m = results["metrics"][name]
            line_with_band(ax, m["coeffs"], m["mean"], m["lo"], m["hi"], label=name)
            ax.axvline(0, color="#888", lw=0.8, ls=":")
            ax.set_xlabel(f"coefficient ({results['op']}, {results['unit']}) at {results['site']}")
            ax.set_ylabel(METRIC_INFO.get(name, ("", name))[1])
            ax.set_title(name)
        run.figure(fig, f"{prefix}dose_response_{group}.png",
                   caption=f"{group.replace('_', ' ')} vs. steering coefficient; bands: "
                           f"{results['ci']}", title=f"{prefix}{group.replace('_', ' ')}")
    rows = rows_of(results)
    run.write_csv(f"{prefix}dose_response.csv", rows)
    summary = [{"metric": n, "at min coeff": m["mean"][0], "at max coeff": m["mean"][-1],
                "spearman(coeff, mean)": m["spearman"], "n": m["n"]}
               for n, m in results["metrics"].items()]
    run.table(f"{prefix}steering at {results['site']}", summary,
              note=f"coefficients {results['coeffs']}; {results['ci']}")


def run_validation(lm: LoadedModel, vector: SteeringVector, site: str, coeffs: Any, out: str | Path,
                   *, config: Mapping[str, Any] | None = None,
                   inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`validate` and write a run directory at ``out``; returns the results."""
    from reprlab.report import RunDir

    run = RunDir.create(out, workflow="steer-validate", config=dict(config or {}),
                        inputs={"model": lm.identity(), "vector_method": vector.method,
                                "vector_source": vector.source, **(inputs or {})},
                        seed=kwargs.get("seed", 0))
    results = validate(lm, vector, site, coeffs, report=run, **kwargs)
    run.finish(results, title=f"reprlab steering validation: {lm.name} at {results['site']}",
               summary=summary_line(results))
    return results


def summary_line(results: Mapping[str, Any]) -> str:
    parts = []
    for name, m in results["metrics"].items():
        parts.append(f"{name}: {m['mean'][0]:.3g} → {m['mean'][-1]:.3g} "
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


def validate_probe_run(probe_run: Any, lm: LoadedModel, data: Any, coeffs: Any = "-8:8:9", *,
                       site: str | None = None, readout_site: str | None = None,
                       report: RunDir | None = None, **kwargs: Any) -> dict[str, Any]:
    """Readout-shift validation of a probe direction (the probe workflow's ``--validate``).

    ``probe_run`` is a probe run directory, a sweep result exposing ``.probes`` (site ->
    probe) or such a mapping. The direction of the probe at ``site`` (default: the sweep's best
    layer) is added at that site with each coefficient; the probe at ``readout_site`` (default
    the same site) scores ``data`` (a ``LabeledDataset`` or texts). With ``report`` the plots
    and table are added to that run's report (file names prefixed ``steer_``).
    """
    readouts, results = _readouts_of(probe_run)
    site = site or best_site(results, readouts)
    r_steer = pick(readouts, site)
    r_read = pick(readouts, readout_site or site)
    texts = list(getattr(data, "texts", data) or [])
    if not texts:
        raise DataError("validation needs the texts the probes were trained on; pass data")
    vector = SteeringVector({site: r_steer.unit}, {site: r_steer.scale or 1.0},
                            model={}, method="probe", position=r_steer.position,
                            source=str(probe_run) if isinstance(probe_run, (str, Path)) else "")
    kwargs.setdefault("side_effects", True)
    out = validate(lm, vector, site, coeffs, texts=texts, readout=r_read, report=None,
                   **kwargs)
    if report is not None:
        add_to_report(report, out, prefix="steer_")
    return out
