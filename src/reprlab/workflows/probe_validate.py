"""``reprlab probe --validate``: fit probes, then steer along the best linear direction.

Probing shows a concept is *readable* at a layer; steering along the probe's direction and
reading the next probed layer shows whether the model *uses* it. This module joins
:mod:`reprlab.probes` (the sweep and its report) and :mod:`reprlab.steering` (the dose-response
validation), so neither package imports the other to do it.
"""

from __future__ import annotations

from typing import Any

from reprlab.errors import ConfigError
from reprlab.probes.run import probe as probe_only
from reprlab.probes.sweep import SweepResult, pick_linear

# texts steered at every coefficient by default (each is run once per coefficient)
DEFAULT_VALIDATE_ROWS = 200


def probe(model: Any = "minilm", data: Any = "builtin:cities", *, validate: bool = False,
          validate_coeffs: Any = "-8:8:9", validate_rows: int | None = DEFAULT_VALIDATE_ROWS,
          validate_unit: str = "sd", answers: bool = False, **kwargs: Any) -> SweepResult:
    """:func:`reprlab.probes.probe` (same arguments), and with ``validate=True`` steer along the
    best linear probe's direction at its site with ``validate_coeffs``, adding the readout
    shift (with side effects) to the report and to ``results.json["steering_validation"]``.

    Validation runs on a seeded, label-balanced sample of ``validate_rows`` texts (None/0: all;
    the report states the size); coefficients are in units of ``validate_unit`` ("sd": the
    standard deviation of the activations' projection on the direction at the site).
    """
    if answers:
        from reprlab.data import load_dataset
        from reprlab.workflows.probe_answers import (
            add_answer_columns,
            answers_line,
            check_answers,
        )

        if kwargs.get("store") is not None:
            raise ConfigError("--answers runs the model on the texts; give --data instead of "
                              "--store")
        check_answers(load_dataset(data, **(kwargs.get("data_kwargs") or {}))
                      if isinstance(data, str) else data)

        def with_answers(extra: Any) -> Any:
            def run_extra(result: SweepResult, run: Any, lm: Any, loaded: dict[str, Any]
                          ) -> dict[str, Any]:
                out = {"model_answers": add_answer_columns(result, lm, loaded["data"],
                                                           kwargs.get("batch_size", 32))}
                out["model_answers"]["line"] = answers_line(result)
                run.text("Knows vs says", out["model_answers"]["line"])
                return out | (extra(result, run, lm, loaded) if extra else {})
            return run_extra
    else:
        def with_answers(extra: Any) -> Any:
            return extra
    if not validate:
        return probe_only(model, data, report_extra=with_answers(None), **kwargs)
    if kwargs.get("store") is not None:
        raise ConfigError("--validate runs the model on the training texts; give --data "
                          "instead of --store")
    if not kwargs.get("report", True):
        raise ConfigError("validate=True adds to the report; leave report=True")
    seed = kwargs.get("seed", 0)
    batch_size = kwargs.get("batch_size", 32)
    progress = kwargs.get("progress", True)

    def steer_best(result: SweepResult, run: Any, lm: Any, loaded: dict[str, Any]
                   ) -> dict[str, Any]:
        from reprlab.steering.validate import causal_headline, validate_probe_run

        # steer at the best linear site, read with the probe of the next probed site:
        # a readout at the steered site itself moves linearly by construction
        best = pick_linear(result.rows)["site"]
        order = list(result.linear_probes())
        i = order.index(best)
        result.validation = validate_probe_run(
            result, lm, loaded["data"], validate_coeffs, site=best,
            readout_site=order[min(i + 1, len(order) - 1)], report=run,
            batch_size=batch_size, seed=seed, progress=progress, max_texts=validate_rows,
            unit=validate_unit)
        return {"steering_validation": result.validation,
                "headline": causal_headline(result.validation)}

    return probe_only(model, data, report_extra=with_answers(steer_best), **kwargs)


def parse_coeffs(spec: Any) -> list[float]:
    """The steering coefficients ``validate_coeffs`` names (one clear error when malformed)."""
    from reprlab.steering.operators import parse_coeffs as parse

    return parse(spec)


def summary_line(validation: dict[str, Any]) -> str:
    """One line for the console: the readout shift along the best probe."""
    from reprlab.steering.validate import causal_headline

    return (f"steering along the best linear probe at {validation['site']}, read at "
            f"{validation['readout_site']}: {causal_headline(validation)}")


__all__ = ["parse_coeffs", "probe", "summary_line"]
