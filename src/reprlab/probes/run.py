"""End to end: capture a dataset once, sweep probes over the store, write the report."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reprlab.errors import StoreError
from reprlab.probes.frozen import Probe
from reprlab.probes.sweep import SweepResult, pick_linear, sweep

logger = logging.getLogger(__name__)


def _data_name(spec: Any) -> str:
    if isinstance(spec, str):
        base = spec.split(":", 1)[1] if ":" in spec and not Path(spec).exists() else Path(spec).stem
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "data"
    return getattr(spec, "name", "") or "data"


def probe(model: Any = "minilm", data: Any = "builtin:cities", *,
          sites: str | Sequence[str] | None = None,
          positions: str | Sequence[str] | None = None,
          probes: str | Sequence[str] = ("logistic", "mass-mean"),
          evals: Sequence[Any] = (), test: Any = None, out: str | Path = "runs/probe",
          store: str | Path | None = None, split: tuple[float, float, float] = (0.6, 0.2, 0.2),
          folds: int | None = None, seed: int = 0, controls: bool | int = True,
          bootstrap: int = 1000,
          options: dict[str, dict] | None = None, batch_size: int = 32, device: str = "cpu",
          model_dtype: str = "float32", max_length: int = 512, limit: int | None = None,
          data_kwargs: dict[str, Any] | None = None, progress: bool = True,
          report: bool = True,
          report_extra: Callable[..., dict[str, Any]] | None = None) -> SweepResult:
    """Capture ``data`` (and ``evals`` / ``test``) with ``model`` at ``sites`` x ``positions``,
    sweep the probe families over the store and write a run directory at ``out``.

    Stores are kept under ``out/stores/`` and reused when the same request is made again;
    ``store`` points at an existing store instead of capturing ``data``. ``sites`` defaults to
    ``embed,layers.*`` when capturing and to every site of ``store``; ``positions`` to
    ``last,mean`` when capturing and to every position of ``store``. Returns the
    :class:`SweepResult` (``result.run_dir`` is the report directory).

    ``report_extra(result, run, lm, loaded)`` (``run`` the report's :class:`RunDir`, ``lm`` the
    loaded model or None, ``loaded`` the datasets by role) may add to the report before it is
    written; what it returns joins ``results.json``. Steering along the best probe
    (``--validate``) is :func:`reprlab.workflows.probe`, which joins probing and steering.
    """
    from reprlab.capture import capture
    from reprlab.data import load_dataset
    from reprlab.models import as_loaded
    from reprlab.report.rundir import invalidate
    from reprlab.store import ActivationStore

    out = Path(out)
    kw = dict(data_kwargs or {})
    if limit:
        kw["limit"] = int(limit)
    if positions is None:
        pos = None if store is not None else ["last", "mean"]
    else:
        pos = list(positions.split(",")) if isinstance(positions, str) else list(positions)
    inputs: dict[str, Any] = {}
    loaded: dict[str, Any] = {}
    lm = None

    cap_sites: Any = sites or "embed,layers.*"
    cap_pos: Any = pos

    def grab(spec: Any, name: str, role: str) -> Any:
        nonlocal lm
        ds = load_dataset(spec, **kw) if isinstance(spec, str) else spec
        loaded[role] = ds
        if lm is None:
            lm = as_loaded(model, device=device, dtype=model_dtype)
            if store is not None:  # eval/test activations must come from the store's model
                main.check_model(lm.identity())
        if report:  # an earlier finished run in ``out`` must not read as complete from here on
            invalidate(out)
        st = capture(lm, ds, cap_sites, cap_pos, out / "stores" / name, batch_size=batch_size,
                     max_length=max_length, progress=progress)
        inputs[role] = {"name": str(spec) if isinstance(spec, str) else name,
                        "hash": ds.hash() if callable(getattr(ds, "hash", None)) else "",
                        "rows": len(ds.texts),
                        "truncated_rows": int(st.manifest.get("n_truncated") or 0),
                        "max_length": st.manifest.get("max_length")}
        return st

    if store is not None:
        main = ActivationStore.open(store)
        inputs["data"] = {"name": f"store:{store}", "hash": main.manifest.get("data", {}).get("hash", ""),
                          "rows": main.n_rows}
        inputs["model"] = main.manifest.get("model", {})
        # eval / test sets are captured at the store's sites and positions
        cap_sites = list(sites.split(",")) if isinstance(sites, str) else (sites or main.sites)
        cap_pos = pos or [p for p in main.positions if p != "all"]
    else:
        main = grab(data, "train-" + _data_name(data), "data")
    eval_stores = {}
    for spec in evals:
        name = _data_name(spec)
        eval_stores[name] = grab(spec, "eval-" + name, f"eval:{name}")
    test_store = grab(test, "test-" + _data_name(test), "test") if test is not None else None
    if lm is not None:
        inputs["model"] = {**lm.identity(), "spec": model if isinstance(model, str) else lm.name}
    result = sweep(main, sites=None if store is None else sites, positions=pos, probes=probes,
                   split=split, test=test_store, folds=folds, evals=eval_stores, seed=seed,
                   controls=controls, bootstrap=bootstrap, options=options, progress=progress)
    if report:
        from reprlab.probes.report import write_run

        model_name = inputs.get("model", {}).get("name", str(model))
        extra = None
        if report_extra is not None:
            def extra(run: Any) -> dict[str, Any]:
                return report_extra(result, run, lm, loaded)

        result.run_dir = write_run(result, out, inputs=inputs, extra=extra,
                                   title=f"Probes: {_data_name(data)} on {model_name}")
    return result


def load_probes(run_dir: str | Path, position: str | None = None,
                family: str | None = None) -> dict[str, Probe]:
    """``{site: probe}`` saved by a probe run, for one linear family at one position (default:
    those of the run's best linear row), e.g. to validate or steer along its directions."""
    from reprlab.io import read_json

    run = Path(run_dir)
    if not (run / "results.json").exists() or not (run / "probes").is_dir():
        raise StoreError(f"{run} is not a probe run (no results.json and probes/); run "
                         "`reprlab probe --out DIR` first")
    rows = read_json(run / "results.json")["rows"]
    row = pick_linear(rows, position, family)
    position, family = row["position"], row["family"]
    out = {}
    for r in rows:  # in the run's site order (embed, layers.0, ..., layers.10, ...)
        stem = run / "probes" / f"{r['site']}__{position.replace(':', '_')}__{family}"
        if (r["position"], r["family"]) == (position, family) and Path(f"{stem}.json").exists():
            out[r["site"]] = Probe.load(stem)
    if not out:
        raise StoreError(f"{run}/probes has no {family} probes at position {position}")
    return out
