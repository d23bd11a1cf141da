"""`unlearnx info`: what was compiled and, per op, the backend CPU and CUDA tensors use."""
import re

import torch

from unlearnx import _native, cli
from unlearnx.ops import registry


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 3 and cells[0] in {s.name for s in registry.OPS}:
            rows[cells[0]] = cells[1:]
    return rows


def test_info_prints_a_cpu_and_a_cuda_backend_per_op(capsys, monkeypatch):
    monkeypatch.setenv("UNLEARNX_BACKEND", "auto")
    assert cli.main(["info"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {s.name for s in registry.OPS}
    for op, (cpu, cuda) in rows.items():
        assert cpu.split()[0] == ("native" if _native.native_loaded() else "reference"), (op, cpu)
        assert cuda.split()[0] in ("native", "triton", "reference"), (op, cuda)
        python_cuda = _native.native_loaded() and not _native.native_has_kernel(op, "cuda")
        assert cuda.endswith("(registered from Python)") == python_cuda, (op, cuda)


def test_info_exits_2_on_an_unusable_forced_backend(capsys, monkeypatch):
    monkeypatch.setenv("UNLEARNX_BACKEND", "bogus")
    assert cli.main(["info"]) == 2
    assert "UNLEARNX_BACKEND='bogus'" in capsys.readouterr().out
    if not torch.cuda.is_available():
        # native forced: the CPU column is usable wherever the library is; CUDA is not checked without a GPU
        monkeypatch.setenv("UNLEARNX_BACKEND", "native")
        assert cli.main(["info"]) == (0 if _native.native_loaded() else 2)
