"""device.keep_freed_memory: glibc's malloc keeps freed memory for reuse instead of returning it to the OS."""

import pytest


@pytest.mark.slow  # a subprocess
def test_keep_freed_memory_on_glibc_linux():
    import platform
    import subprocess
    import sys

    code = "from model.device import keep_freed_memory; import torch; ok = keep_freed_memory(); " \
           "x = torch.ones(50_000_000); del x; y = torch.ones(50_000_000); print(ok, float(y.sum()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out == [str(glibc), "50000000.0"]
