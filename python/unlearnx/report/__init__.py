"""unlearnx.report: atomic persistence (JSON, safetensors), figures, and the Markdown/HTML report."""
from unlearnx.report.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_state_dict,
    read_json,
    save_state_dict,
    to_jsonable,
)
from unlearnx.report.plots import image_grid, loss_curves, metric_bars, report_figures, tradeoff_scatter
from unlearnx.report.render import (
    MAIN_COLUMNS,
    format_value,
    render_html,
    render_markdown,
    report_blocks,
    reproducibility_blocks,
    summary_table,
    write_report,
)

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "read_json",
    "to_jsonable",
    "save_state_dict",
    "load_state_dict",
    "MAIN_COLUMNS",
    "format_value",
    "report_blocks",
    "reproducibility_blocks",
    "render_markdown",
    "render_html",
    "summary_table",
    "write_report",
    "metric_bars",
    "tradeoff_scatter",
    "loss_curves",
    "image_grid",
    "report_figures",
]

