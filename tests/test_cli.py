"""The behaviour every script shares: the same flags, the same one-line errors (data.py's run plumbing)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["ta3n.py", "baselines.py", "tcon.py", "ma2l_td.py", "apn.py"]
SHARED = ["--source", "--target", "--data-root", "--epochs", "--batch-size", "--lr", "--seed", "--device", "--out",
          "--resume", "--num-segments", "--source-list", "--source-val-list", "--val-list", "--class-file",
          "--skip-bad-videos", "--synth-seed", "--synth-dim"]


def run(script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_the_shared_flags(script):
    p = run(script, "--help")
    assert p.returncode == 0
    missing = [flag for flag in SHARED if flag not in p.stdout]
    assert not missing, missing


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("args, message", [
    (["--source", "ucff"], "error: unknown --source 'ucff' (choose from"),
    (["--epochs", "x"], "error: argument --epochs: invalid int value: 'x' (see --help)"),
    (["--seed", "-2"], "error: --seed must be in [0, 2^32), got -2"),
])
def test_every_script_gives_the_same_one_line_errors(script, args, message):
    p = run(script, *args)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith(message), p.stderr
