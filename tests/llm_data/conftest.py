import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # On a busy 2-core machine two intra-op threads oversubscribe the cores: tiny-model steps
    # measured 30x slower than with one thread. Pin LM tests to one thread, then restore.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
