"""Report pages and console lines of ``reprlab patch`` and ``reprlab patch sweep``.

A patching result is only readable with its inputs beside it: the two prompts, the sites and
position, and (for a sweep) the metric and its tokens. Numbers are formatted once
(:mod:`reprlab.report.fmt`); cells that patching left unchanged up to float noise read 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reprlab.report.fmt import num


def inputs(lm: Any, source_lm: Any = None) -> dict[str, Any]:
    """The page's and manifest's inputs: the model, and the source model only when there is
    one (never ``source_model: None``)."""
    out: dict[str, Any] = {"model": lm.identity()}
    if source_lm is not None and source_lm is not lm:
        out["source model"] = source_lm.identity()
    return out


def _prompts_block(run: Any, source: str, target: str, extra: Mapping[str, str]) -> None:
    rows = [{"": "source prompt (read)", "value": source},
            {"": "target prompt (written)", "value": target},
            *({"": k, "value": v} for k, v in extra.items())]
    run.table("Inputs", rows)


def topk_rows(res: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """Rank, token and probability of the source, clean target and patched target."""
    rows = []
    for i in range(k):
        row: dict[str, Any] = {"rank": i + 1}
        for name in ("source", "target", "patched"):
            top = res.get(f"{name}_top")
            if top and i < len(top):
                row[f"{name} token"] = top[i]["token"]
                row[f"{name} p"] = num(top[i]["prob"], 3)
        rows.append(row)
    return rows


def patch_headline(res: Mapping[str, Any]) -> str:
    """Top line: the clean and patched target's first prediction."""
    t, p = res.get("target_top"), res.get("patched_top")
    pos = res.get("pos_used", {}).get("target", res["pos"]) if isinstance(
        res.get("pos_used"), Mapping) else res["pos"]
    head = (f"{res['from']} of the source written into {res['to']} of the target at position "
            f"{pos}")
    if t and p:
        head += (f": the target's top prediction goes from {t[0]['token']!r} "
                 f"(p = {num(t[0]['prob'], 3)}) to {p[0]['token']!r} (p = {num(p[0]['prob'], 3)})")
    return head + "."


def write_patch(run: Any, res: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """Fill and finish the ``reprlab patch`` page; returns the top-k rows."""
    rows = topk_rows(res, k)
    _prompts_block(run, res["source"], res["target"],
                   {"read at": f"{res['from']}, position {res['pos']}",
                    "written at": f"{res['to']}, position {res['pos']}",
                    "backend": f"{res['backend']}{' (remote)' if res.get('remote') else ''}"})
    run.table("Top predictions: source, clean target, patched target", rows)
    run.write_csv("topk.csv", rows)
    run.inputs.update({"source prompt": res["source"], "target prompt": res["target"],
                       "sites": f"{res['from']} → {res['to']}"})
    run.finish(res, title="reprlab patch", summary=patch_headline(res))
    return rows


def sweep_rows(res: Any) -> list[dict[str, Any]]:
    """One row per (site, position) cell with its value and effect (floats, for the CSV)."""
    return [{"site": s, "position": p, "token": t, "value": float(res.values[i, j]),
             "effect": float(res.effect[i, j])}
            for i, s in enumerate(res.sites)
            for j, (p, t) in enumerate(zip(res.positions, res.tokens, strict=True))]


def sweep_headline(res: Any, best: Mapping[str, Any]) -> str:
    rec = res.recovery
    metric = f"{res.metric}({', '.join(repr(t) for t in res.extra.get('metric_tokens', []))})"
    line = (f"Largest effect on {metric}: {num(best['effect'], 3)} when patching "
            f"{best['site']} at position {best['position']} ({best['token']!r}); clean target "
            f"{num(res.target_clean, 3)}")
    if res.source_clean is not None:
        line += f", source {num(res.source_clean, 3)}"
    if rec is not None:
        i, j = res.sites.index(best["site"]), res.positions.index(best["position"])
        line += f"; that cell recovers {float(rec[i, j]):.0%} of the source–target gap"
    return line + "."


def write_sweep(run: Any, res: Any, figure: Any, source: str, target: str
                ) -> tuple[list[dict[str, Any]], dict, str]:
    """Fill and finish the ``reprlab patch sweep`` page; returns (rows, best, headline)."""
    rows = sweep_rows(res)
    best = max(rows, key=lambda r: abs(r["effect"]))
    head = sweep_headline(res, best)
    tokens = ", ".join(repr(t) for t in res.extra.get("metric_tokens", []))
    _prompts_block(run, source, target,
                   {"metric": f"{res.metric} of {tokens} at the last position",
                    "sites": f"{res.sites[0]} … {res.sites[-1]} ({len(res.sites)})",
                    "positions": ", ".join(f"{p}:{t}" for p, t in
                                           zip(res.positions, res.tokens, strict=True))})
    src = "" if res.source_clean is None else f"; source: {num(res.source_clean, 4)}"
    run.figure(figure, "heatmap.png", title="Patching effect by site and position",
               caption=f"{res.metric} of {tokens} on the patched target minus the clean target "
                       f"({num(res.target_clean, 4)}){src}.")
    run.write_csv("cells.csv", rows)
    scale = max(abs(r["effect"]) for r in rows) or None
    top = sorted(rows, key=lambda r: -abs(r["effect"]))[:10]
    run.table("Largest effects (top 10 cells)",
              [{**r, "value": num(r["value"], 4), "effect": num(r["effect"], 3, scale)}
               for r in top], note="cells.csv holds every cell.")
    results = {"source": source, "target": target, **res.to_json()}
    run.inputs.update({"source prompt": source, "target prompt": target,
                       "metric": f"{res.metric} of {tokens}",
                       "sites": f"{res.sites[0]} … {res.sites[-1]}"})
    run.finish(results, title="reprlab patch sweep",
               summary=f"{head} {len(rows)} cells in {res.n_forwards} forwards (one per cell "
                       f"would take {results['naive_forwards']}).")
    return rows, best, head


def console_sweep(res: Any, best: Mapping[str, Any]) -> list[str]:
    src = "–" if res.source_clean is None else num(res.source_clean, 4)
    return [f"clean target {res.metric}: {num(res.target_clean, 4)}; source: {src}",
            f"largest effect {num(best['effect'], 4)} at {best['site']} position "
            f"{best['position']} ({best['token']})"]
