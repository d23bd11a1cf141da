"""Report figures as PNG bytes (matplotlib, Agg backend: no display needed).

- `metric_bars`: one panel per metric, one bar per method, a dashed line at Retrain's value.
- `tradeoff_scatter`: forgetting (|UA − UA_Retrain|) against utility (TA), one point per method.
- `loss_curves`: the per-epoch (or per-step) losses each training/unlearning run logged.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

__all__ = ["metric_bars", "tradeoff_scatter", "place_labels", "loss_curves", "image_grid", "report_figures"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless and deterministic; never opens a window
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def metric_bars(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str], *,
                reference: str = "Retrain", errors: Mapping[str, Mapping[str, float]] | None = None) -> bytes:
    """Bars of each metric per method (rows other than `reference`) with `reference` as a dashed line.

    rows: {method: {metric: value}}; errors: optional {method: {metric: std}} drawn as error bars.
    """
    plt = _pyplot()
    metrics = [m for m in metrics if any(m in r for r in rows.values())]
    if not metrics:
        raise ValueError("none of the requested metrics occurs in rows")
    names = [n for n in rows if n != reference]
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    colors = plt.get_cmap("tab10")
    for ax, m in zip(axes.flat, metrics):
        vals = [rows[n].get(m, float("nan")) for n in names]
        err = [errors.get(n, {}).get(m, 0.0) for n in names] if errors else None
        ax.bar(range(len(names)), vals, yerr=err, color=[colors(i % 10) for i in range(len(names))], capsize=3)
        if reference in rows and m in rows[reference]:
            ax.axhline(rows[reference][m], color="black", linestyle="--", linewidth=1, label=reference)
            ax.legend(fontsize=7, loc="best")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(m, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def tradeoff_scatter(rows: Mapping[str, Mapping[str, float]], *, x: str = "gap/UA", y: str = "TA",
                     reference: str = "Retrain") -> bytes:
    """Scatter of metric `x` (forgetting; default |UA − Retrain's|, lower is better) against metric
    `y` (utility; default TA), one labelled point per method that has both."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    pts = [(i, name, float(r[x]), float(r[y])) for i, (name, r) in enumerate(rows.items()) if x in r and y in r]
    for i, name, px, py in pts:
        marker = "*" if name == reference else "o"
        ax.scatter(px, py, s=120 if name == reference else 50, marker=marker,
                   color="black" if name == reference else plt.get_cmap("tab10")(i % 10))
    # Labels of points that (nearly) coincide would be drawn on top of each other (e.g. Original and
    # methods that barely moved it): place each label at the first vertical offset whose box, in
    # display points, overlaps no label placed before.
    ax.autoscale_view()
    to_points = ax.transData.transform
    scale = 72.0 / fig.dpi
    labels = place_labels([(name, *(v * scale for v in to_points((px, py)))) for _, name, px, py in pts])
    coords = {name: (px, py) for _, name, px, py in pts}
    for text, first, dy in labels:
        # A label moved away from its point gets a thin leader line back to it.
        arrow = None if dy == _LABEL_DY[0] else {"arrowstyle": "-", "lw": 0.5, "color": "0.4"}
        ax.annotate(text, coords[first], textcoords="offset points", xytext=(8, dy), fontsize=8, arrowprops=arrow)
    ax.set_xlabel(x + (" (forgetting error, lower is better)" if x.startswith("gap/") else ""))
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


_LABEL_DY = (-3, -15, 9, -27, 21, -39, 33, -51, 45, -63)  # vertical offsets tried, in points


def place_labels(points: Sequence[tuple[str, float, float]]) -> list[tuple[str, str, float]]:
    """Readable labels for scatter points given in display points [(name, x, y)]: points within 2
    points of each other share one label "A = B"; each label goes right of its point at the first
    vertical offset whose box overlaps no label placed before (top to bottom). Returns
    [(label text, name of the point it belongs to, vertical offset)]."""
    groups: list[list] = []
    for name, bx, by in points:
        for g in groups:
            if abs(g[2] - bx) < 2 and abs(g[3] - by) < 2:
                g[0] += f" = {name}"
                break
        else:
            groups.append([name, name, bx, by])
    placed: list[tuple[float, float, float]] = []  # (x, y, width) of placed labels
    out = []
    for text, first, bx, by in sorted(groups, key=lambda g: -g[3]):
        width = 5.0 * len(text) + 6
        dy = _LABEL_DY[0]
        for dy in _LABEL_DY:
            if all(abs(by + dy - qy) >= 10 or bx + 8 >= qx + qw or qx >= bx + 8 + width for qx, qy, qw in placed):
                break
        placed.append((bx + 8, by + dy, width))
        out.append((text, first, dy))
    return out


def loss_curves(curves: Mapping[str, Sequence[float]]) -> bytes:
    """One line per run: {run name: [loss per epoch or step]} (runs without a curve are skipped)."""
    plt = _pyplot()
    curves = {k: list(v) for k, v in curves.items() if v}
    if not curves:
        raise ValueError("curves has no non-empty loss curve")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o" if len(values) <= 30 else None, markersize=3,
                label=name)
    ax.set_xlabel("epoch (or logged step)")
    ax.set_ylabel("loss (symmetric log scale)")
    # Losses span decades (and gradient ascent logs negative ones): symlog shows both.
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def image_grid(columns: Mapping[str, Sequence[tuple[str, object]]]) -> bytes:
    """A grid of images: one column per entry of `columns` ({title: [(row label, image)]}, images
    as tensors [C, H, W] in [0, 1], C 1 or 3), rows in the order of the first column's labels."""
    plt = _pyplot()
    titles = list(columns)
    if not titles or not columns[titles[0]]:
        raise ValueError("columns must hold at least one column with one image")
    rows = [label for label, _ in columns[titles[0]]]
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(1.3 * len(titles) + 1.2, 1.3 * len(rows) + 0.4),
                             squeeze=False)
    for j, title in enumerate(titles):
        cells = dict(columns[title])
        for i, label in enumerate(rows):
            ax = axes[i][j]
            img = cells[label].detach().float().cpu().clamp(0, 1)
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None,
                      interpolation="nearest", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
            if j == 0:
                ax.set_ylabel(str(label), fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _png(fig)


def report_figures(results: Mapping) -> dict[str, tuple[str, bytes]]:
    """The report's figures for a results dict: {file name: (caption, png bytes)}.

    Bars of the main metrics vs Retrain, the forget/retain trade-off, and the loss curves of seed
    `results["seeds"][0]` when any run logged one.
    """
    rows, std = results["rows"], results.get("std")
    main = [m for m in ("UA", "RA", "TA", "MIA-Efficacy", "Avg.Gap", "RTE-s") if any(m in r for r in rows.values())]
    figs: dict[str, tuple[str, bytes]] = {}
    if main and len(rows) > 1:
        figs["metrics.png"] = ("Each metric per method; dashed line: Retrain (the oracle).",
                               metric_bars(rows, main, errors=std))
    if any("gap/UA" in r and "TA" in r for r in rows.values()):
        figs["tradeoff.png"] = ("Forget/retain trade-off: |UA − Retrain's UA| (left is better forgetting) "
                                "against test accuracy (up is better utility).", tradeoff_scatter(rows))
    runs = results.get("runs", {})
    first = runs.get(str(results.get("seeds", [None])[0])) if results.get("seeds") else None
    curves = {f"{name}: {k}": v for name, r in (first or {}).items() for k, v in (r.get("loss_curves") or {}).items()}
    if curves:
        figs["loss_curves.png"] = (f"Training / unlearning loss as logged (seed {results['seeds'][0]}).",
                                   loss_curves(curves))
    return figs
