"""One self-contained HTML page: inline CSS, PNGs as data URIs, no external requests."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d2330;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #e3e6ec;
padding-bottom:.3rem}.sub{color:#667085;margin-top:0}
.wide{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.86rem;margin:.5rem 0}
th,td{padding:.28rem .6rem;border-bottom:1px solid #eceef2;text-align:right;max-width:28rem;
overflow-wrap:anywhere}
th{background:#f6f7f9;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eceef2;border-radius:6px}
figcaption{color:#475467;font-size:.9rem}.note{color:#667085;font-size:.85rem}
pre{background:#f6f7f9;padding:.8rem;overflow:auto;font-size:.8rem;border-radius:6px;
white-space:pre-wrap;overflow-wrap:anywhere}
p,li,code{overflow-wrap:anywhere}
details summary{cursor:pointer;color:#344054}
"""


def _fmt(v: Any) -> str:
    from reprlab.report.fmt import num

    if isinstance(v, float):
        return num(v, 4)   # four significant digits, no exponent from 1e-3 to 1e6
    return html.escape("–" if v is None else str(v))


def table(title: str, rows: Sequence[Mapping[str, Any]], note: str = "") -> str:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return (f"<h2>{html.escape(title)}</h2>{note_html}<div class=\"wide\"><table><thead><tr>"
            f"{head}</tr></thead><tbody>{body}</tbody></table></div>")


def figure(png: bytes, title: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    head = f"<h2>{html.escape(title)}</h2>" if title else ""
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'{head}<figure><img alt="{html.escape(title or caption)}" src="data:image/png;base64,{data}">{cap}</figure>'


def text(title: str, body: str, raw_html: bool = False) -> str:
    content = body if raw_html else "".join(f"<p>{html.escape(p)}</p>" for p in body.split("\n\n"))
    return f"<h2>{html.escape(title)}</h2>{content}"


def page(title: str, summary: str, blocks: Sequence[tuple[str, str]], manifest: Mapping) -> str:
    inputs = manifest.get("inputs", {})
    sub = " · ".join(f"{k}: {html.escape(str(v.get('name', v) if isinstance(v, dict) else v))}"
                     for k, v in inputs.items() if v not in (None, "", {}))
    body = "\n".join(b for _, b in blocks)
    man = html.escape(json.dumps(manifest, indent=2, default=str))
    summ = f"<p>{html.escape(summary)}</p>" if summary else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='sub'>{sub}</p>{summ}{body}"
            f"<h2>Manifest</h2><details><summary>model, data, seeds, versions, command line</summary>"
            f"<pre>{man}</pre></details></body></html>")
