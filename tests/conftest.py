import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True, scope="module")
def _restore_float_environment():
    """Controllers flush denormals on the loading thread (FTZ/DAZ); leave it as we found it for the next module."""
    yield
    torch.set_flush_denormal(False)
