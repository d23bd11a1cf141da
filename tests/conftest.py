import os

# Triton kernels run on CPU tensors only under the interpreter, which must be switched on before
# triton (or any unlearnx.kernels module) is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
