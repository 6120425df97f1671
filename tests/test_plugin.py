"""The plugin as users meet it: collection, ids, markers, usage errors, and a torch-free controller."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import REPO, VALIDATION


def run_pytest(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_full_suite_collects_fast_with_readable_ids_and_without_torch() -> None:
    probe = textwrap.dedent(f"""
        import sys, time, pytest
        started = time.perf_counter()
        rc = pytest.main(["--co", "-q", "-p", "no:cacheprovider", {str(VALIDATION)!r}, "--suite", "full"])
        print("SECONDS", time.perf_counter() - started)
        print("TORCH", "torch" in sys.modules, "INVARLOCK", "invarlock" in sys.modules)
        sys.exit(rc)
    """)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TORCH False INVARLOCK False" in result.stdout
    assert "438 tests collected" in result.stdout
    assert "test_edit[mistral-7b-quant_rtn_clean-run2]" in result.stdout
    assert "test_benchmark[qwen2.5-14b-prune_clean-hellaswag]" in result.stdout
    assert "test_error[qwen1.5-72b-ve_mlp_scale_skew-run1]" in result.stdout
    assert "test_error[qwen1.5-72b-nan_injection-run1]" in result.stdout
    print(f"collection wall time {wall:.2f} s")  # perf/collection.py measures it; not asserted here


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--suite", "nosuch"), "unknown suite 'nosuch'"),
        (("--suite", ""), "--suite was given an empty name"),
        (("--suite", "  "), "--suite was given an empty name"),
        (("--models", "no-such-model"), "unknown model 'no-such-model'"),
        (("--runs-clean", "-1"), "--runs-clean must be >= 0"),
        (("--progress-interval", "-1"), "argument --progress-interval: invalid non_negative_number value"),
        (("--invarlock-disk-headroom", "inf"), "argument --invarlock-disk-headroom: invalid non_negative_number value"),
        (("--invarlock-max-model-failures", "-2"), "argument --invarlock-max-model-failures: invalid non_negative_count value"),
    ],
)
def test_bad_command_lines_are_usage_errors(args: tuple[str, ...], needle: str) -> None:
    result = run_pytest("--co", str(VALIDATION), *args)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert needle in result.stderr


def test_a_bad_edit_spec_in_a_suite_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text("models: [tiny-kjv]\nscenarios: [{name: q, spec: 'quant_rtn:banana:ffn', kind: clean}]\n")
    result = run_pytest("--co", str(VALIDATION), "--suite", str(suite))
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert str(suite) in result.stderr and "banana" in result.stderr and "quant_rtn:8:128:ffn" in result.stderr


def test_markers_and_selection_options(tmp_path: Path) -> None:
    stress = run_pytest("--co", "-q", str(VALIDATION), "-m", "stress")
    assert stress.returncode == 0
    ids = [line for line in stress.stdout.splitlines() if "::" in line]
    assert ids and all("_stress-" in line for line in ids)
    only_cal = run_pytest("--co", "-q", str(VALIDATION), "--calibrate-only")
    ids = [line for line in only_cal.stdout.splitlines() if "::" in line]
    assert ids and all("test_calibration[" in line for line in ids)
    no_bench = run_pytest("--co", "-q", str(VALIDATION), "--no-benchmarks", "--runs-clean", "1", "--no-errors")
    ids = [line for line in no_bench.stdout.splitlines() if "::" in line]
    assert not any("test_benchmark[tiny" in line or "test_error[tiny" in line for line in ids)
    assert not any("_clean-run2" in line for line in ids)


def test_models_that_cannot_run_here_are_skipped_with_the_reason() -> None:
    result = run_pytest(
        "-q", "-rs", str(VALIDATION), "--suite", "subset", "--offline", "--invarlock-device", "cpu", "-k", "calibration-run1"
    )
    assert result.returncode == 0, result.stdout
    assert "needs a GPU" in result.stdout


def test_offline_refuses_hub_models_without_a_pinned_revision() -> None:
    result = run_pytest(
        "-q", "-rs", str(VALIDATION), "--suite", "ci", "--offline", "--invarlock-device", "cuda", "-k", "gpt2-calibration-run1"
    )
    assert "without a pinned revision" in result.stdout


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["single-process", "xdist"])
def test_a_path_pytest_cannot_find_is_a_usage_error(tmp_path: Path, xdist: tuple[str, ...]) -> None:
    """`pytest validation/ --suite tiny` from a directory without validation/: exit 4 naming the path, with or without -n."""
    result = run_pytest("validation/", "--suite", "tiny", *xdist, cwd=tmp_path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "file or directory not found: validation/" in result.stderr
    assert "INTERNALERROR" not in result.stdout + result.stderr
