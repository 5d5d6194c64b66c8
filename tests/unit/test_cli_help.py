"""Every command line's --help prints: argparse formats help text only when asked, so a
stray '%' in a help string goes unnoticed until an operator types --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = [
    "mediaserver",
    "loadtest",
    "loadtest.adaptation",
    "loadtest.shaped",
    "bench.capacity",
    "bench.compare",
    "bench.forwarding",
    "bench.micro",
    "bench.paired",
    "bench.perf_split",
    "bench.percall",
    "bench.packet_path",
    "bench.recording",
    "bench.relay_server",
]


@pytest.mark.parametrize("module", MODULES)
def test_help_prints(module: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
    assert "Traceback" not in out.stderr
