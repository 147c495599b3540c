"""Tables and the HTML page of the helical part of the power-spectrum job.

* ``layer_lines.csv``: ``class, height_inv_A, peak_radius_inv_A, strength, half_agreement,
  meridional`` (one row per detected line, heights >= 0, ``meridional`` true/false,
  ``half_agreement`` ``nan`` without half sets);
* ``helical_candidates.csv``: ``class, rank, rise_A, twist_deg, csym, pitch_A, score,
  matched_lines, note`` (rank 1 = best, twist in (-180, 180], one hand reported: the note
  says which ambiguities apply);
* ``index.html``: one self-contained page (no server, no network, images are the PNGs
  beside it, referenced by relative name): per class the turned average and spectrum with
  the top candidate overlaid, the half-set agreement figure, and the candidate and layer-line
  tables. When every ``<img>`` has loaded, a script sets ``document.title`` to
  ``"csplugin spectra: N images loaded"`` and ``<body data-images-loaded="N">`` (what the
  headless-browser test reads).
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any

from formats.atomic import atomic_output

__all__ = ["CANDIDATE_COLUMNS", "LINE_COLUMNS", "candidates_csv", "index_html", "layer_lines_csv"]

LINE_COLUMNS = ["class", "height_inv_A", "peak_radius_inv_A", "strength", "half_agreement",
                "meridional"]
CANDIDATE_COLUMNS = ["class", "rank", "rise_A", "twist_deg", "csym", "pitch_A", "score",
                     "matched_lines", "note"]


def _fold(twist: float) -> float:
    t = math.fmod(twist, 360.0)
    return t - 360.0 if t > 180.0 else (t + 360.0 if t <= -180.0 else t)


def _g(x: float, digits: int = 6) -> str:
    return "nan" if x is None or not math.isfinite(x) else (
        "inf" if math.isinf(x) else f"{x:.{digits}g}")


def layer_lines_csv(path: Path, results: list[Any]) -> None:
    """Write ``layer_lines.csv`` (module docstring)."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LINE_COLUMNS)
        for r in results:
            for ln in r.lines:
                w.writerow([r.k, _g(abs(ln.height), 8), _g(ln.peak_radius, 8),
                            _g(ln.strength, 5), _g(ln.half_agreement, 4),
                            "true" if ln.meridional else "false"])


def candidates_csv(path: Path, results: list[Any]) -> None:
    """Write ``helical_candidates.csv`` (module docstring)."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CANDIDATE_COLUMNS)
        for r in results:
            for rank, c in enumerate(r.candidates, start=1):
                w.writerow([r.k, rank, _g(c.rise, 7), _g(_fold(c.twist), 7), c.csym,
                            _g(abs(c.pitch), 7), _g(c.score, 5), c.matched_lines, c.note])


_STYLE = """
body{font-family:sans-serif;margin:1.2em;color:#222;max-width:1500px}
h1{font-size:1.4em} h2{font-size:1.15em;border-top:1px solid #aaa;padding-top:.6em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#eee} td.note{text-align:left;max-width:40em}
img{max-width:100%;display:block;margin:.3em 0}
.meta{font-size:.85em;color:#444} .warn{color:#a40}
details{margin:.3em 0}
"""

_SCRIPT = """
(function(){
  function check(){
    var imgs=document.images, ok=0;
    for(var i=0;i<imgs.length;i++){ if(imgs[i].complete && imgs[i].naturalWidth>0) ok++; }
    if(ok===imgs.length){
      document.title='csplugin spectra: '+ok+' images loaded';
      document.body.setAttribute('data-images-loaded', String(ok));
    } else {
      document.body.setAttribute('data-images-loaded', 'waiting '+ok+'/'+imgs.length);
      setTimeout(check, 50);
    }
  }
  window.addEventListener('load', check);
})();
"""


def index_html(path: Path, results: list[Any], figures: dict[int, dict[str, str]],
               summary: dict[str, Any]) -> None:
    """Write ``index.html`` (module docstring)."""
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>csplugin spectra</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>Averaged power spectra and helical indexing</h1>"]
    meta = [("input", summary.get("input")), ("particles", summary.get("particles")),
            ("pixel size (Å)", summary.get("pixel_size_A")),
            ("header pixel size (Å, edge = Nyquist)", summary.get("header_pixel_size_A")),
            ("orientation", (summary.get("options") or {}).get("axis")),
            ("half sets split by", (summary.get("half_sets") or {}).get("split_by")),
            ("stack order (ps_classes.mrcs, class_averages.mrcs)", summary.get("stack_order"))]
    parts.append("<table class='meta'>" + "".join(
        f"<tr><th>{e(str(k))}</th><td style='text-align:left'>{e(str(v))}</td></tr>"
        for k, v in meta) + "</table>")
    parts.append("<p class='meta'>Files: <a href='ps_classes.mrcs'>ps_classes.mrcs</a>, "
                 "<a href='class_averages.mrcs'>class_averages.mrcs</a>, "
                 "<a href='layer_lines.csv'>layer_lines.csv</a>, "
                 "<a href='helical_candidates.csv'>helical_candidates.csv</a>, "
                 "<a href='summary.json'>summary.json</a>. A power spectrum cannot tell the "
                 "hand, the sign of a Bessel order, or (without a meridional reflection at "
                 "1/rise) rise from pitch: the candidates are a ranked list, not an answer.</p>")
    counts = summary.get("classes") or {}
    for r in results:
        parts.append(f"<h2 id='class{r.k}'>Class {r.k}"
                     f" ({e(str(counts.get(str(r.k), counts.get(r.k, '?'))))} particles)</h2>")
        info = []
        if r.axis_angle_deg is not None:
            info.append(f"helical axis {r.axis_angle_deg:.2f}° in the class frame, turned by "
                        f"{r.rotation_deg:.2f}°")
        if r.radius_range:
            info.append(f"helix radius {r.radius_range[0]:.0f}–{r.radius_range[1]:.0f} Å "
                        f"({e(r.radius_source)})")
        info.append(f"{len(r.lines)} layer lines, {len(r.candidates)} candidates")
        parts.append("<p class='meta'>" + "; ".join(info) + "</p>")
        if r.message:
            parts.append(f"<p class='warn'>{e(r.message)}</p>")
        figs = figures.get(r.k, {})
        if "spectrum" in figs:
            parts.append(f"<img src='{e(figs['spectrum'])}' alt='class {r.k}: average, spectrum"
                         " and profiles'>")
        if "agreement" in figs:
            parts.append(f"<img src='{e(figs['agreement'])}' alt='class {r.k}: half-set "
                         "agreement' style='max-width:600px'>")
        if r.candidates:
            rows = "".join(
                f"<tr><td>{i}</td><td>{c.rise:.3f}</td><td>{_fold(c.twist):.2f}</td>"
                f"<td>{c.csym}</td><td>{abs(c.pitch):.1f}</td><td>{c.score:.2f}</td>"
                f"<td>{c.matched_lines}</td><td class='note'>{e(c.note)}</td></tr>"
                for i, c in enumerate(r.candidates[:10], start=1))
            parts.append("<table><tr><th>rank</th><th>rise (Å)</th><th>twist (°)</th>"
                         "<th>Cn</th><th>pitch (Å)</th><th>score</th><th>lines matched</th>"
                         f"<th>note</th></tr>{rows}</table>")
        if r.lines:
            rows = "".join(
                f"<tr><td>{ln.height:.5f}</td><td>{1 / ln.height if ln.height else math.inf:.2f}"
                f"</td><td>{ln.peak_radius:.5f}</td><td>{ln.strength:.1f}</td>"
                f"<td>{_g(ln.half_agreement, 3)}</td><td>{'yes' if ln.meridional else ''}</td></tr>"
                for ln in r.lines)
            parts.append("<details><summary>layer lines</summary><table><tr><th>Z (1/Å)</th>"
                         "<th>1/Z (Å)</th><th>first maximum R (1/Å)</th><th>strength (σ)</th>"
                         f"<th>half-set agreement</th><th>meridional</th></tr>{rows}</table>"
                         "</details>")
    parts.append("<details><summary>summary.json</summary><pre>"
                 + e(json.dumps(summary, indent=1, default=str)[:20000]) + "</pre></details>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    with atomic_output(path) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")
