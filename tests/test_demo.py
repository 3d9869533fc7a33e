"""The README's first command: the demo runs, restores, verifies and reports, in a real subprocess."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_snapshots_restores_and_verifies(tmp_path):
    repo = tmp_path / "demo-repo"
    r = subprocess.run([sys.executable, "-m", "casstore.demo", "--repo", str(repo), "--steps", "30"],
                       capture_output=True, timeout=300, text=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "30 snapshots in" in out and "verify: ok" in out and "first step restored exactly" in out
    assert "path='memory'" in out
    ratio = float(re.search(r"dedup ratio ([\d.]+)x\)", out).group(1))
    assert ratio > 5, out
    assert re.search(r"snapshots:\s+30", out)   # the CLI's stats of the same repository
