"""bench/gpu_check.py in its CPU smoke mode: every check runs at tiny size and passes (the two-GPU one is skipped)."""

from __future__ import annotations

import re

from helpers import run_script


def test_gpu_check_smoke_passes_on_cpu(tmp_path):
    result = run_script("bench/gpu_check.py", ["--device", "cpu", "--smoke", "--out", str(tmp_path / "out")],
                        timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    verdicts = {int(number): status for status, number in re.findall(r"^(PASS|FAIL|SKIP) \[(\d)\]", result.stdout,
                                                                      re.MULTILINE)}
    assert sorted(verdicts) == list(range(1, 8)), output
    assert verdicts.pop(6) == "SKIP", output  # two GPUs: --device cpu hides every GPU
    assert set(verdicts.values()) == {"PASS"}, output
    assert "| train bf16 |" in result.stdout and "| decode fp32 |" in result.stdout, output
