"""The load and abuse mix (benchmarks/serve_load.py --quick) against a real `vitft serve` on
127.0.0.1: good requests never get a 5xx, a bomb or an oversized body never costs memory, and a
normal request is answered while 40 slow uploads are open. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_abuse_mix_quick(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "VITFT_RESULTS_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--quick"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    goals = json.loads(next(line for line in lines if line.startswith("GOALS "))[6:])
    codes = {  # kind -> its status codes, from the table's status_codes column
        c[1].strip(): [int(x.split("x")[0]) for x in c[6].split()]
        for c in (line.split("|") for line in lines if line.startswith("| "))
        if c[1].strip() != "kind"
    }
    assert goals["good_requests"] > 0 and goals["good_5xx_or_no_answer"] == 0
    assert goals["peak_rss_mb"] < 3 * 1024 and goals["server_alive_after"]
    assert goals["probes_with_slow_uploads_open"] > 0
    assert goals["probes_answered_200"] == goals["probes_with_slow_uploads_open"]
    assert codes["bomb"] == [413] and codes["corrupt"] == [400] and codes["oversized"] == [413]
    assert codes["good"] == [200] and codes["multipart"] == [200] and codes["large"] == [200]
    assert codes["bomb64"] == [413]
    assert lines[-1].split()[:2] == ["RESULT", "serve_load"]
