"""Progress bars must not iterate a data loader twice.

tqdm.auto's class (tqdm.asyncio) calls iter() on its iterable in its constructor, which for a
shuffling DataLoader consumes a permutation (and would start worker processes) for nothing.
unlearnx wraps loaders in plain tqdm only.
"""
import pathlib
import re

PKG = pathlib.Path(__file__).resolve().parents[1] / "python" / "unlearnx"


def test_no_tqdm_auto_in_the_package():
    offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if re.search(r"tqdm\.(auto|asyncio)", p.read_text())]
    assert offenders == []
