"""What importing dahp sets up before torch is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PROBE = """
import dahp, os, torch
tensor = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MB, as large as a batch's activations
rollup = open("/proc/self/smaps_rollup").read()
print(os.environ["THP_MEM_ALLOC_ENABLE"], int(rollup.split("AnonHugePages:")[1].split()[0]))
"""


def _probe(**env: str) -> tuple[str, int]:
    environment = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"} | env
    output = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True,
                            check=True).stdout.split()
    return output[0], int(output[1])


@pytest.mark.skipif(not THP_MODE.exists() or "[madvise]" not in THP_MODE.read_text(),
                    reason="needs Linux with transparent huge pages in madvise mode (where the setting matters)")
def test_importing_dahp_backs_large_tensors_with_huge_pages_unless_the_user_says_no() -> None:
    setting, huge_kb = _probe()
    assert setting == "1" and huge_kb >= 32 << 10
    setting, huge_kb = _probe(THP_MEM_ALLOC_ENABLE="0")
    assert setting == "0" and huge_kb < 32 << 10
