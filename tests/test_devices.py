"""Process-wide settings of a training run: the device a config names, and the heap that keeps freed memory."""

import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from resel_train.config import resolve_config
from resel_train.devices import configure_torch, resolve_device

_FAULTS = textwrap.dedent("""
    import random, resource, sys, torch
    if sys.argv[1] == "retain":
        from resel_train.devices import retain_freed_memory
        assert retain_freed_memory()
    rng = random.Random(0)
    def cycle():  # like an update: a few dozen blocks of 0.2-4 MB live together, sizes changing every call
        blocks = [torch.empty(rng.randrange(50_000, 1_000_000)).fill_(1.0) for _ in range(30)]
        del blocks
    for _ in range(5):
        cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        cycle()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_retained_heap_stops_the_page_faults_of_repeated_allocations():
    """With glibc's defaults, freeing and reallocating blocks of a few hundred KB faults thousands of pages back
    in every time; with the heap retaining freed memory, almost none (counted by the kernel, in a fresh process)."""
    def faults(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        return float(done.stdout.strip())

    default, retained = faults("default"), faults("retain")
    assert default > 500, f"the default heap no longer faults ({default} per cycle): the test needs a new pattern"
    assert retained < 0.05 * default, (retained, default)


def test_configure_torch_sets_threads_and_seed(tmp_path):
    cfg = resolve_config("Pendulum-P", "cpu", overrides=["threads=1", "seed=7", "device=cpu"], out=str(tmp_path))
    threads = torch.get_num_threads()
    try:
        assert configure_torch(cfg) == torch.device("cpu")
        assert torch.get_num_threads() == 1 and torch.initial_seed() == 7
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="names a GPU this machine lacks")
def test_a_missing_gpu_is_named_with_the_fix():
    with pytest.raises(ValueError, match="torch sees no CUDA GPU; use --device cpu or auto"):
        resolve_device("cuda")
