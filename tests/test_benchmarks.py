"""The throughput benchmarks measure cnncli as its command runs: driven through the real scripts."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _side(tmp_path, *args):
    env = {**os.environ, "FASHION_MNIST_IDX": str(tmp_path / "none"), "PYTHONPATH": str(ROOT)}
    env.pop("OPENBLAS_NUM_THREADS", None)  # as in a user's shell: only cnncli's own import may set it
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "side.py"), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_side_cnncli_sets_up_its_environment_before_numpy_loads(tmp_path):
    # numpy loaded before cnncli.config gives OpenBLAS its own threads inside each kernel thread (4-6x slower
    # training under load): the cnncli side must import cnncli first, as the cnncli command does.
    rec = _side(tmp_path, "cnncli", "train", "m1", "--threads", "1", "--seconds", "0")
    assert rec["numpy_before_cnncli"] is False
    assert rec["side"] == "cnncli" and rec["steps"] >= 3 and rec["img_s"] > 0
