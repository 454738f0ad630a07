"""`benchmarks/e14_scale.py verify`: the streamed checkpoint writer and its BAAI layout, checked on a tiny EVA
tower (the file holds the seeded values; the BAAI file loads to the same tower as the open_clip file) and on
every ViT-E/14 name (timm's filter maps the BAAI names back). The full-size run is the benchmark itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_verify_the_writer_and_the_baai_layout() -> None:
    r = subprocess.run([sys.executable, "benchmarks/e14_scale.py", "verify"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "baai load == open_clip load" in r.stdout and "e14: 840 keys renamed" in r.stdout
