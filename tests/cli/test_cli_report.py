"""Report rendering and atomic persistence, on results dicts built here (no training)."""
import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from unlearnx.report import (
    atomic_write_bytes,
    atomic_write_json,
    format_value,
    load_state_dict,
    read_json,
    render_html,
    render_markdown,
    report_blocks,
    save_state_dict,
    summary_table,
    write_report,
)


def results(n_seeds=1):
    rows = {"Retrain": {"UA": 5.0, "RA": 100.0, "TA": 94.0, "MIA-Efficacy": 12.0, "Avg.Gap": 0.0, "RTE-s": 40.0,
                        "gap/UA": 0.0, "gap/TA": 0.0, "MIA-MemberRate": 0.8},
            "FT": {"UA": 1.0, "RA": 99.9, "TA": 94.1, "MIA-Efficacy": 3.0, "Avg.Gap": 3.3, "RTE-s": 2.0,
                   "gap/UA": 4.0, "gap/TA": 0.1, "MIA-MemberRate": 0.9},
            "ℓ1-sparse <b>": {"UA": 4.0, "RA": 97.7, "TA": 91.6, "MIA-Efficacy": 9.8, "Avg.Gap": 2.3, "RTE-s": 2.4,
                              "gap/UA": 1.0, "gap/TA": 2.4}}
    std = {k: {m: 0.5 for m in v} for k, v in rows.items()} if n_seeds > 1 else {}
    return {"name": "unit", "rows": rows, "std": std, "seeds": list(range(n_seeds)), "suite": "classification",
            "scenario": {"name": "random-10", "data": "digits", "n_train": 100, "n_forget": 10, "n_retain": 90,
                         "n_test": 30},
            "config": {"model": {"name": "small_cnn"}}, "skipped": [{"method": "salun", "reason": "not registered"}],
            "hparams": {"FT": {"method": "ft", "hparams": {"lr": 0.01}, "resolved": {"lr": 0.01, "epochs": 10}}},
            "runs": {"0": {"FT": {"loss_curves": {"retain_loss": [1.0, 0.5, 0.2]}}, "Retrain": {"loss_curves": {}}}},
            "audit": {"n_forget": 10, "forget_digest": {"0": "ab" * 32},
                      "models": {"seed 0 / FT": {"file": "seed-0/methods/FT.safetensors", "sha256": "cd" * 32}}},
            "versions": {"unlearnx": "0.1.0"}, "machine": {"cpu": "x"}, "timings": {"total_s": 1.5}}


def test_format_value():
    assert format_value(None) == "–"
    assert format_value(12.345) == "12.35" and format_value(12.345, 0.5) == "12.35 ± 0.50"
    assert format_value(0.001234) == "1.23e-03" and format_value(0.0) == "0.00"


def test_markdown_and_html_have_every_row_and_escape_names(tmp_path):
    paths = write_report(results(n_seeds=2), tmp_path)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    for name in ("Retrain", "FT", "ℓ1-sparse <b>"):
        assert f"| {name} |" in md
    assert "<td>ℓ1-sparse &lt;b&gt;</td>" in page and "<b>" not in re.sub(r"<b>[^<]*</b>", "", page.split("<body>")[1])
    assert "94.00 ± 0.50" in md and "94.00 ± 0.50" in page
    assert "Not run: salun (not registered)" in md
    assert "cd" * 32 in md and "ab" * 32 in page  # the audit section
    assert "<script" not in page and "http" not in page.split("<style>")[0]
    # Self-contained: every figure is an embedded PNG that decodes, and exists next to report.md.
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 3 == len(paths["plots"])
    assert all(base64.b64decode(u).startswith(b"\x89PNG") for u in uris)
    assert {p.name for p in paths["plots"]} == {"metrics.png", "tradeoff.png", "loss_curves.png"}
    # The summary table printed by the CLI: main columns only, every row.
    table = summary_table(results())
    assert table.count("\n") == 5 and "MIA-MemberRate" not in table and "Avg.Gap" in table


def test_blocks_reject_bad_input():
    with pytest.raises(ValueError, match="'rows'"):
        report_blocks({"name": "x"}, {})
    with pytest.raises(ValueError, match="unknown block kind"):
        render_markdown([("video", "x")])
    with pytest.raises(ValueError, match="unknown block kind"):
        render_html([("video", "x")])


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1, "t": torch.tensor([1.5]), "nan": float("nan")})
    assert read_json(target) == {"a": 1, "t": [1.5], "nan": None}

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert read_json(target)["a"] == 1  # the old content survives
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind
    with pytest.raises(TypeError, match="data must be bytes"):
        atomic_write_bytes(target, "text")
    assert read_json(tmp_path / "missing.json") is None


def test_safetensors_round_trip_and_mismatch(tmp_path):
    from unlearnx.models import small_cnn

    torch.manual_seed(0)
    a = small_cnn(width=4)
    a(torch.rand(4, 1, 8, 8))  # move BatchNorm running stats away from their init
    save_state_dict(a, tmp_path / "m.safetensors")
    torch.manual_seed(1)
    b = load_state_dict(small_cnn(width=4), tmp_path / "m.safetensors")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(ValueError, match="do not match the model architecture"):
        load_state_dict(small_cnn(width=8), tmp_path / "m.safetensors")
    with pytest.raises(FileNotFoundError, match="model weights not found"):
        load_state_dict(a, tmp_path / "none.safetensors")


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")
def test_html_report_renders_in_headless_chromium(tmp_path):
    paths = write_report(results(n_seeds=2), tmp_path)
    profile = tmp_path / "profile"
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
    url = paths["html"].resolve().as_uri()
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # Console messages of the page (errors, failed loads) are logged as CONSOLE lines.
    assert not [l for l in dom.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l], dom.stderr[-2000:]
    assert dom.stdout.count("<table") >= 4 and dom.stdout.count("<img") == 3
    shot = tmp_path / "shot.png"
    run = subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,3000", url], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and shot.read_bytes().startswith(b"\x89PNG"), run.stderr[-2000:]
    shutil.rmtree(profile, ignore_errors=True)


def test_scatter_labels_of_coinciding_points_stay_readable():
    from unlearnx.report.plots import place_labels, tradeoff_scatter

    pts = [("Original", 400.0, 100.0), ("FT", 400.5, 100.2), ("l1-sparse", 400.0, 95.0), ("GA", 400.0, 91.0),
           ("Retrain", 10.0, 100.0)]
    labels = place_labels(pts)
    texts = [t for t, _, _ in labels]
    assert "Original = FT" in texts and len(texts) == 4  # coinciding points share one label
    boxes = {t: (400 + 8 if t != "Retrain" else 18, dict((n, y) for n, _, y in pts)[first] + dy, 5.0 * len(t) + 6)
             for t, first, dy in labels}
    names = list(boxes)
    for i, a in enumerate(names):  # no two label boxes overlap
        for b in names[i + 1:]:
            (ax, ay, aw), (bx, by, bw) = boxes[a], boxes[b]
            assert abs(ay - by) >= 10 or ax + aw <= bx or bx + bw <= ax, (a, b)
    png = tradeoff_scatter({"Retrain": {"gap/UA": 0.0, "TA": 98.0}, "Original": {"gap/UA": 100.0, "TA": 98.0},
                            "FT": {"gap/UA": 100.0, "TA": 98.0}})
    assert png.startswith(b"\x89PNG")
