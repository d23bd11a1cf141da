"""report.md and report.html from a results dict (the content of results.json).

Both files are rendered from one list of blocks (`report_blocks`), so they always say the same
thing: the main table (UA / RA / TA / MIA-Efficacy / Avg. Gap / time, mean ± std over seeds),
secondary metrics, hyper-parameters, figures, a deletion-audit section (forget-set digest and
model file hashes) and the reproducibility record (versions, machine, seeds, config).
The HTML is self-contained: figures are embedded as base64 PNGs, no scripts, no external links
needed to display it.
"""
from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping

__all__ = ["MAIN_COLUMNS", "report_blocks", "reproducibility_blocks", "render_markdown", "render_html", "format_value",
           "summary_table",
           "write_report"]

MAIN_COLUMNS = ("UA", "RA", "TA", "MIA-Efficacy", "Avg.Gap", "RTE-s")
_HIGHER_LOWER = {"UA": "→ Retrain", "RA": "→ Retrain", "TA": "→ Retrain", "MIA-Efficacy": "→ Retrain",
                 "Avg.Gap": "↓", "RTE-s": "↓"}


def format_value(mean, std=None) -> str:
    """'12.34' or '12.34 ± 0.56'; '–' for a missing value; scientific notation for tiny numbers."""
    if mean is None:
        return "–"
    if not isinstance(mean, (int, float)) or isinstance(mean, bool):
        return str(mean)

    def f(v):
        return f"{v:.2e}" if v != 0 and abs(v) < 0.01 else f"{v:.2f}"

    return f(mean) if std is None else f"{f(mean)} ± {f(std)}"


def _table(results: Mapping, columns) -> tuple[list[str], list[list[str]]]:
    rows, std = results["rows"], results.get("std", {})
    headers = ["Method"] + [f"{c} ({_HIGHER_LOWER[c]})" if c in _HIGHER_LOWER else c for c in columns]
    body = [[name] + [format_value(r.get(c), std.get(name, {}).get(c)) for c in columns] for name, r in rows.items()]
    return headers, body


def _main_columns(rows: Mapping) -> list[str]:
    cols = [c for c in MAIN_COLUMNS if any(c in r for r in rows.values())]
    return cols + (["RTE-ratio"] if any("RTE-ratio" in r for r in rows.values()) else [])


def summary_table(results: Mapping) -> str:
    """The main results table (UA, RA, TA, MIA-Efficacy, Avg.Gap, time) as Markdown text."""
    return render_markdown([("table", *_table(results, _main_columns(results["rows"])))])


def report_blocks(results: Mapping, figures: Mapping[str, tuple[str, bytes]]) -> list[tuple]:
    """The report as blocks: ("h", level, text), ("p", text), ("table", headers, rows),
    ("img", file name, png bytes, caption), ("pre", text). figures: {file name: (caption, png)}."""
    if not isinstance(results, Mapping) or "rows" not in results:
        raise ValueError("results must be a results dict with a 'rows' entry")
    sc, cfg = results.get("scenario", {}), results.get("config", {})
    seeds = results.get("seeds", [])
    rows = results["rows"]
    blocks: list[tuple] = [("h", 1, f"unlearnx report: {results.get('name', 'experiment')}")]
    if results.get("reading"):
        blocks.append(("p", f"**In short:** {results['reading']}"))
    blocks.append(("p", (
        f"Scenario **{sc.get('name', '?')}** on data **{sc.get('data', '?')}**: |D| = {sc.get('n_train', '?')}, "
        f"|D_f| = {sc.get('n_forget', '?')}, |D_r| = {sc.get('n_retain', '?')}, |test| = {sc.get('n_test', '?')}. "
        f"Model **{cfg.get('model', {}).get('name', '?')}**; evaluation suite **{results.get('suite', '?')}**; "
        f"seeds {seeds} (mean ± std over seeds when more than one). Retrain (training from scratch on D_r with "
        f"the original recipe) is the oracle: UA, RA, TA and MIA-Efficacy are best when closest to Retrain; "
        f"Avg. Gap is the mean absolute difference to Retrain over those four.")))
    main_cols = _main_columns(rows)
    blocks += [("h", 2, "Results"), ("table", *_table(results, main_cols))]
    other = [c for c in dict.fromkeys(k for r in rows.values() for k in r)
             if c not in main_cols and not c.startswith("gap/")]
    if other:
        blocks += [("h", 3, "Further metrics"), ("table", *_table(results, other))]
    gaps = [c for c in dict.fromkeys(k for r in rows.values() for k in r) if c.startswith("gap/")]
    if gaps:
        blocks += [("h", 3, "Gap to Retrain per metric (|metric − Retrain's|, lower is better)"),
                   ("table", *_table(results, gaps))]
    skipped = results.get("skipped", [])
    if skipped:
        blocks.append(("p", "Not run: " + "; ".join(f"{s['method']} ({s['reason']})" for s in skipped) + "."))
    hp = results.get("hparams", {})
    if hp:
        blocks += [("h", 2, "Methods and hyper-parameters"),
                   ("table", ["Method", "registered name", "set in the config", "all hyper-parameters used"],
                    [[k, v.get("method", ""), json.dumps(v.get("hparams", {}), sort_keys=True),
                      json.dumps(v.get("resolved", {}), sort_keys=True)] for k, v in hp.items()])]
    if figures:
        blocks.append(("h", 2, "Figures"))
        for fname, (caption, png) in figures.items():
            blocks.append(("img", fname, png, caption))
    audit = results.get("audit", {})
    if audit:
        blocks += [("h", 2, "Deletion audit"), ("p", (
            f"Forget set: {audit.get('n_forget')} samples of the training set; SHA-256 of the sorted forget "
            f"indices (int64, little-endian) per seed: {audit.get('forget_digest')}. Model files (safetensors) "
            f"and their SHA-256:"))]
        files = audit.get("models", {})
        blocks.append(("table", ["Seed / model", "file", "sha256"],
                       [[k, v["file"], v["sha256"]] for k, v in files.items()]))
    return blocks + reproducibility_blocks(results)


def reproducibility_blocks(results: Mapping, *, extra: tuple[str, ...] = ()) -> list[tuple]:
    """The report's closing section, the same for every task: versions and machine, `extra`
    paragraphs, timings, and the configuration as JSON."""
    versions, machine = results.get("versions", {}), results.get("machine", {})
    return [("h", 2, "Reproducibility"),
            ("p", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". Machine: "
             + ", ".join(f"{k} {v}" for k, v in machine.items()) + "."),
            *(("p", text) for text in extra),
            ("p", "Timings (s): " + ", ".join(f"{k} {format_value(v)}"
                                              for k, v in results.get("timings", {}).items()) + "."),
            ("p", "Configuration:"), ("pre", json.dumps(results.get("config", {}), indent=2, sort_keys=True))]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks, *, figure_dir: str = "plots") -> str:
    """Markdown; figures are linked as `figure_dir/<file name>` (written next to report.md)."""
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + b[2])
        elif kind == "p":
            out.append(b[1])
        elif kind == "table":
            headers, rows = b[1], b[2]
            out.append("\n".join(["| " + " | ".join(_md_cell(h) for h in headers) + " |",
                                  "|---|" + "---:|" * (len(headers) - 1)]
                                 + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]))
        elif kind == "img":
            out.append(f"![{b[3]}]({figure_dir}/{b[1]})\n\n*{b[3]}*")
        elif kind == "pre":
            out.append("```\n" + b[1] + "\n```")
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px}
td{text-align:right;font-variant-numeric:tabular-nums}td:first-child{text-align:left;font-weight:600}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:12px}
img{max-width:100%}figure{margin:1em 0}figcaption{font-size:13px;color:#555}"""


def _inline_md(text: str) -> str:
    # Only **bold** occurs in our paragraphs; everything else is escaped.
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks, *, title: str = "unlearnx report") -> str:
    """A self-contained HTML5 page (inline CSS, figures as base64 data URIs, no scripts)."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline_md(b[1])}</p>")
        elif kind == "table":
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1])
                       + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2]]
            out.append("</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(b[2]).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(b[3])}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(b[3])}</figcaption></figure>")
        elif kind == "pre":
            out.append(f"<pre>{html.escape(b[1])}</pre>")
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(results: Mapping, out_dir) -> dict:
    """Write report.md, report.html and plots/*.png for `results` into `out_dir` (each atomically).

    Returns {"markdown": path, "html": path, "plots": [paths]}.
    """
    from pathlib import Path

    from unlearnx.report.io import atomic_write_bytes, atomic_write_text
    from unlearnx.report.plots import report_figures

    out_dir = Path(out_dir)
    figures = report_figures(results)
    plots = [atomic_write_bytes(out_dir / "plots" / name, png) for name, (_, png) in figures.items()]
    blocks = report_blocks(results, figures)
    md = atomic_write_text(out_dir / "report.md", render_markdown(blocks, figure_dir="plots"))
    page = atomic_write_text(out_dir / "report.html",
                             render_html(blocks, title=f"unlearnx report: {results.get('name', 'experiment')}"))
    return {"markdown": md, "html": page, "plots": plots}
