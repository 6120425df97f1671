"""Bad input never produces a traceback: every bad suite file and command-line value is a usage error.

In-process: a table of bad suite files (each a SuiteError naming the file, the key and the value), a
hypothesis search over random YAML structures and random bytes (either a suite or a SuiteError, never
another exception), the command-line overrides and the run-directory probe. Then a few real pytest
sessions: exit 4, the value named on stderr, no "Traceback".
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import REPO, VALIDATION
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.checks import SuiteError
from pytest_invarlock.campaign.suite.definitions import Suite
from pytest_invarlock.campaign.suite.files import MAX_SUITE_BYTES
from pytest_invarlock.campaign.suite.loading import SUITE_KEYS as LOADER_SUITE_KEYS
from pytest_invarlock.campaign.suite.overrides import override_suite
from pytest_invarlock.campaign.suite.scenarios import DETECTORS, MAX_RUNS
from pytest_invarlock.campaign.suite.settings import TIER_FLOORS, TIERS
from pytest_invarlock.scheduling.inventory import parse_gpu_spec
from pytest_invarlock.state import run_dir_problem

GOOD = "models: [tiny-kjv]\n"

# (file name, content, what the message must contain besides the path)
BAD_FILES: list[tuple[str, bytes, list[str]]] = [
    ("binary", b"\x00\x01\x02\xff\xfe\x89PNG", ["not UTF-8", "0xff"]),
    ("latin1", "models: [café]\n".encode("latin-1"), ["not UTF-8", "0xe9"]),
    ("utf16_le", GOOD.encode("utf-16"), ["UTF-16", "UTF-8"]),
    ("utf16_be", b"\xfe\xff" + GOOD.encode("utf-16-be"), ["UTF-16"]),
    ("nul", b"models: [tiny-kjv]\x00\n", ["NUL"]),
    ("empty", b"", ["'models'", "missing or empty"]),
    ("comment_only", b"# nothing\n", ["'models'", "missing or empty"]),
    ("top_list", b"- tiny-kjv\n", ["expected a mapping", "list"]),
    ("top_scalar", b"tiny\n", ["expected a mapping", "str"]),
    ("syntax", b"models: [tiny-kjv\n", ["not valid YAML"]),
    ("tab", b"models:\n\t- tiny-kjv\n", ["not valid YAML"]),
    ("python_tag", b"models: !!python/object/apply:os.system [echo]\n", ["not valid YAML"]),
    ("bad_date", b"models: [tiny-kjv]\ndescription: 2024-13-45\n", ["cannot convert", "Quote"]),
    ("deep", b"models: " + b"[" * 3000 + b"]" * 3000 + b"\n", ["nests too deeply"]),
    ("duplicate_key", b"models: [tiny-kjv]\nmodels: [gpt2]\n", ["'models' twice"]),
    ("unknown_key", b"models: [tiny-kjv]\nmodles: []\n", ["'modles'", "Did you mean 'models'"]),
    ("unknown_key_int", b"models: [tiny-kjv]\n3: 4\n", ["'3'", "unknown key"]),
    ("unknown_model_key", b"models: [{name: a, source: x/y, sauce: 1}]\n", ["models[0].sauce", "source"]),
    ("unknown_invarlock_key", b"models: [tiny-kjv]\ninvarlock: {seqlen: 5}\n", ["invarlock.seqlen", "seq_len"]),
    (
        "unknown_scenario_key",
        b"models: [tiny-kjv]\nscenarios: [{name: a, spec: noop, kind: calibration, gate: 1}]\n",
        ["scenarios[0].gate"],
    ),
    ("unknown_arch_key", b"models: [{name: a, source: x/y, architecture: {layer: 2}}]\n", ["architecture.layer"]),
    ("huge_runs", b"models: [tiny-kjv]\nruns: {clean: 99999999999999999999999}\n", ["runs.clean", "<= 1000"]),
    (
        "huge_scenario_runs",
        b"models: [tiny-kjv]\nscenarios: [{name: a, spec: noop, kind: calibration, runs: 5000}]\n",
        ["scenarios[0].runs", "5000"],
    ),
    ("huge_seq_len", b"models: [tiny-kjv]\ninvarlock: {seq_len: 1" + b"0" * 40 + b"}\n", ["invarlock.seq_len"]),
    ("huge_arch", b"models: [{name: a, source: x/y, architecture: {layers: 1" + b"0" * 30 + b"}}]\n", ["architecture.layers"]),
    ("huge_int_params", b"models: [{name: a, source: x/y, params_b: 1" + b"0" * 400 + b"}]\n", ["params_b", "finite"]),
    ("inf_params", b"models: [{name: a, source: x/y, params_b: .inf}]\n", ["params_b", "finite"]),
    ("nan_acceptance", b"models: [tiny-kjv]\ninvarlock: {acceptance: [.nan, 1.2]}\n", ["acceptance", "finite"]),
    ("negative_params", b"models: [{name: a, source: x/y, params_b: -1.0}]\n", ["params_b", "positive"]),
    ("models_scalar", b"models: tiny-kjv\n", ["'models'"]),
    ("model_int", b"models: [3]\n", ["models[0]", "int"]),
    ("model_null", b"models: [~]\n", ["models[0]", "NoneType"]),
    ("model_nested_list", b"models: [[tiny-kjv]]\n", ["models[0]", "list"]),
    ("model_name_int", b"models: [{name: 3, source: x/y}]\n", ["models[0].name", "slug"]),
    ("model_name_long", b"models: [{name: " + b"a" * 500 + b", source: x/y}]\n", ["models[0].name", "100"]),
    ("model_source_list", b"models: [{name: a, source: [x]}]\n", ["models[0].source", "string"]),
    ("model_source_map", b"models: [{name: a, source: {x: 1}}]\n", ["models[0].source", "string"]),
    ("model_source_empty", b"models: [{name: a, source: ''}]\n", ["models[0].source", "empty"]),
    ("model_source_missing", b"models: [{name: a}]\n", ["models[0].source", "missing"]),
    ("model_revision_list", b"models: [{name: a, source: x/y, revision: [1]}]\n", ["models[0].revision"]),
    ("model_dtype", b"models: [{name: a, source: x/y, dtype: float8}]\n", ["models[0].dtype", "float8"]),
    ("model_size_class_map", b"models: [{name: a, source: x/y, size_class: {a: 1}}]\n", ["models[0].size_class"]),
    ("model_params_str", b"models: [{name: a, source: x/y, params_b: big}]\n", ["models[0].params_b", "'big'"]),
    ("model_params_bool", b"models: [{name: a, source: x/y, params_b: true}]\n", ["models[0].params_b", "True"]),
    ("model_arch_list", b"models: [{name: a, source: x/y, architecture: [1]}]\n", ["models[0].architecture"]),
    ("model_arch_str", b"models: [{name: a, source: x/y, architecture: {layers: x}}]\n", ["architecture.layers", "'x'"]),
    ("model_invarlock_str", b"models: [{name: a, source: x/y, invarlock: fast}]\n", ["models[0].invarlock"]),
    ("model_home_of_nobody", b"models: ['~nosuchuser-invarlock']\n", ["models[0]", "~"]),
    ("runs_list", b"models: [tiny-kjv]\nruns: [1]\n", ["'runs'", "list"]),
    ("runs_null", b"models: [tiny-kjv]\nruns: ~\n", ["'runs'", "NoneType"]),
    ("runs_kind", b"models: [tiny-kjv]\nruns: {cleen: 1}\n", ["runs.cleen", "Did you mean 'clean'"]),
    ("runs_float", b"models: [tiny-kjv]\nruns: {clean: 1.5}\n", ["runs.clean", "1.5"]),
    ("runs_negative", b"models: [tiny-kjv]\nruns: {clean: -3}\n", ["runs.clean", ">= 0"]),
    ("invarlock_null", b"models: [tiny-kjv]\ninvarlock: ~\n", ["'invarlock'"]),
    ("tier_bogus", b"models: [tiny-kjv]\ninvarlock: {tier: bogus}\n", ["invarlock.tier", "balanced"]),
    ("tier_list", b"models: [tiny-kjv]\ninvarlock: {tier: [balanced]}\n", ["invarlock.tier"]),
    (
        "tier_floor",
        b"models: [tiny-kjv]\ninvarlock: {tier: conservative}\n",
        ["models[0].invarlock", "conservative", "220+220", "1500"],
    ),
    ("dataset", b"models: [tiny-kjv]\ninvarlock: {dataset: c4}\n", ["invarlock.dataset", "'c4'"]),
    ("lm_eval_batch", b"models: [tiny-kjv]\ninvarlock: {lm_eval_batch: [16]}\n", ["invarlock.lm_eval_batch", "auto"]),
    ("lm_eval_batch_text", b"models: [tiny-kjv]\ninvarlock: {lm_eval_batch: lots}\n", ["invarlock.lm_eval_batch"]),
    ("guard_overhead", b"models: [tiny-kjv]\ninvarlock: {guard_overhead: maybe}\n", ["guard_overhead", "true or false"]),
    ("acceptance_three", b"models: [tiny-kjv]\ninvarlock: {acceptance: [0.9, 1.1, 1.2]}\n", ["acceptance", "[min, max]"]),
    ("acceptance_text", b"models: [tiny-kjv]\ninvarlock: {acceptance: wide}\n", ["acceptance", "'wide'"]),
    ("acceptance_order", b"models: [tiny-kjv]\ninvarlock: {acceptance: [1.1, 0.9]}\n", ["acceptance", "min < 1 < max"]),
    ("scenarios_null", b"models: [tiny-kjv]\nscenarios: ~\n", ["'scenarios'", "non-empty list"]),
    ("scenario_int", b"models: [tiny-kjv]\nscenarios: [3]\n", ["scenarios[0]", "int"]),
    ("scenario_unknown", b"models: [tiny-kjv]\nscenarios: [quant_rtn_8bit_clen]\n", ["quant_rtn_8bit_clean"]),
    ("scenario_spec_list", b"models: [tiny-kjv]\nscenarios: [{name: a, spec: [1], kind: clean}]\n", ["scenarios[0].spec"]),
    (
        "scenario_spec_bad",
        b"models: [tiny-kjv]\nscenarios: [{name: a, spec: 'quant_rtn:banana:ffn', kind: clean}]\n",
        ["scenarios[0].spec", "banana"],
    ),
    ("scenario_kind", b"models: [tiny-kjv]\nscenarios: [{name: a, spec: noop, kind: [1]}]\n", ["scenarios[0].kind"]),
    (
        "scenario_gating",
        b"models: [tiny-kjv]\nscenarios: [{name: a, spec: 'quant_rtn:4:32:all', kind: stress, gating: maybe}]\n",
        ["scenarios[0].gating", "'maybe'"],
    ),
    (
        "scenario_default",
        b"models: [tiny-kjv]\nscenarios: [{name: a, spec: noop, kind: calibration, default: 3}]\n",
        ["scenarios[0].default"],
    ),
    (
        "detectors_str",
        b"models: [tiny-kjv]\nscenarios: [{name: a, spec: 'quant_rtn:4:32:all', kind: stress, detectors: x}]\n",
        ["scenarios[0].detectors"],
    ),
    (
        "detector_unknown",
        b"models: [tiny-kjv]\nscenarios: [{name: a, spec: 'quant_rtn:4:32:all', kind: stress, detectors: [spectral_stabel]}]\n",
        ["detectors[0]", "spectral_stabel", "Did you mean 'spectral_stable'"],
    ),
    ("errors_text", b"models: [tiny-kjv]\nerrors: maybe\n", ["'errors'", "'maybe'"]),
    ("description_list", b"models: [tiny-kjv]\ndescription: [1]\n", ["'description'", "string"]),
    ("device", b"models: [tiny-kjv]\ndevice: tpu\n", ["'device'", "'tpu'"]),
    ("name_date", b"models: [tiny-kjv]\nname: 2001-12-14\n", ["'name'", "slug"]),
    ("benchmarks_list", b"models: [tiny-kjv]\nbenchmarks: [hellaswag]\n", ["'benchmarks'", "list"]),
    ("tasks_text", b"models: [tiny-kjv]\nbenchmarks: {tasks: hellaswag}\n", ["benchmarks.tasks"]),
    (
        "task_unknown",
        b"models: [tiny-kjv]\nbenchmarks: {tasks: [hellaswagg]}\n",
        ["benchmarks.tasks[0]", "hellaswagg", "did you mean 'hellaswag'"],
    ),
    ("limit_text", b"models: [tiny-kjv]\nbenchmarks: {limit: all}\n", ["benchmarks.limit", "'all'"]),
    ("fewshot_negative", b"models: [tiny-kjv]\nbenchmarks: {num_fewshot: -1}\n", ["benchmarks.num_fewshot"]),
]


@pytest.mark.parametrize(("name", "content", "needles"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_suite_files_name_the_file_the_key_and_the_fix(tmp_path: Path, name: str, content: bytes, needles: list[str]) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    with pytest.raises(SuiteError) as info:
        load_suite(str(path))
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message
    assert len(message) < 1200  # values are shown cut short, never dumped whole


def test_a_directory_and_an_oversized_file_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "suite.yaml"
    directory.mkdir()
    with pytest.raises(SuiteError, match="is a directory"):
        load_suite(str(directory))
    big = tmp_path / "big.yaml"
    big.write_bytes(GOOD.encode() + b"#" * MAX_SUITE_BYTES)
    with pytest.raises(SuiteError, match="more than a suite file can be"):
        load_suite(str(big))
    with pytest.raises(SuiteError, match="cannot expand '~'"):
        load_suite("~nosuchuser-invarlock/suite.yaml")


# --------------------------------------------------------------------------- random structures

SUITE_KEYS = list(LOADER_SUITE_KEYS)  # the real top-level keys: a key the loader gains is fuzzed too
INNER_KEYS = [
    "name",
    "source",
    "revision",
    "size_class",
    "dtype",
    "params_b",
    "architecture",
    "invarlock",
    "spec",
    "kind",
    "gating",
    "detectors",
    "runs",
    "default",
    "tasks",
    "num_fewshot",
    "limit",
    "seq_len",
    "stride",
    "tier",
    "dataset",
    "acceptance",
    "guard_overhead",
    "min_tokens",
    "lm_eval_batch",
    "layers",
    "clean",
    "calibration",
    "stress",
    "error",
    "min",
    "max",
]
REAL_VALUES = [
    "tiny-kjv",
    "gpt2",
    "calibration",
    "clean",
    "stress",
    "error",
    "noop",
    "nan_injection",
    "quant_rtn:8:128:ffn",
    "balanced",
    "conservative",
    "local",
    "cpu",
    "float32",
    "tiny",
    "hellaswag",
    "kjv_cloze",
    "auto:8",
    "spectral_stable",
    "org/name",
    "./model",
    "~nosuchuser-invarlock",
    "/tmp",
    "",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(REAL_VALUES),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(INNER_KEYS), st.text(max_size=6), st.integers()), inner, max_size=4),
    ),
    max_leaves=20,
)
suites = st.dictionaries(st.sampled_from(SUITE_KEYS), values, max_size=6)


def _load_or_suite_error(path: Path) -> None:
    try:
        suite = load_suite(str(path))
    except SuiteError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(suite, Suite) and suite.models


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=suites)
def test_random_suite_structures_load_or_raise_suite_error(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    _load_or_suite_error(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_random_bytes_load_or_raise_suite_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "bytes.yaml"
    path.write_bytes(raw)
    _load_or_suite_error(path)


# --------------------------------------------------------------------------- command-line values


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"models": ["./no/such/dir"]}, ["--models", "./no/such/dir", "does not exist"]),
        ({"models": ["/no/such/model/dir"]}, ["--models", "does not exist"]),
        ({"models": ["~nosuchuser-invarlock/model"]}, ["--models", "cannot expand '~'"]),
        ({"models": ["no-such-model"]}, ["--models", "unknown model 'no-such-model'"]),
        ({"models": ["tiny-kjv", "tiny-kjv"]}, ["--models", "appears twice"]),
        ({"models": ["a\x00b"]}, ["--models", "not a model name"]),
        ({"runs": {"clean": -3}}, ["--runs-clean", "-3", ">= 0"]),
        ({"runs": {"stress": MAX_RUNS + 1}}, ["--runs-stress", str(MAX_RUNS + 1)]),
        ({"tier": "bogus"}, ["--tier", "'bogus'", "balanced"]),
        ({"tier": "balanced "}, ["--tier", "balanced"]),
        ({"tier": "conservative"}, ["--tier conservative", "220+220", "tiny-kjv"]),
        ({"benchmarks": ["no_such_task_xyz"]}, ["--benchmarks", "no_such_task_xyz", "kjv_cloze"]),
        ({"benchmarks": ["Bad Name"]}, ["--benchmarks", "'Bad Name'"]),
    ],
)
def test_bad_overrides_name_the_option_and_the_value(tmp_path: Path, overrides: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(SuiteError) as info:
        override_suite(load_suite("tiny"), **overrides)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_valid_overrides_still_work(tmp_path: Path) -> None:
    model_dir = tmp_path / "my-model-1b"
    model_dir.mkdir()
    suite = override_suite(
        load_suite("tiny"),
        models=[str(model_dir), "org/other-7b"],
        tier="aggressive",
        benchmarks=["kjv_cloze", "hellaswag"],
        runs={"clean": 0, "stress": MAX_RUNS},
    )
    assert [m.source for m in suite.models] == [str(model_dir), "org/other-7b"]
    assert {m.settings.tier for m in suite.models} == {"aggressive"}
    assert suite.benchmarks.tasks == ("kjv_cloze", "hellaswag")


@pytest.mark.parametrize("spec", ["garbage", "8xx80", "0x80", "8x0", "99999x80", "1" * 400, "80:90", ",", "8x80,,24"])
def test_bad_gpu_specs_name_the_option_and_the_fix(spec: str) -> None:
    with pytest.raises(ValueError, match=r"^--gpus .*Write COUNTxGB"):
        parse_gpu_spec(spec)


def test_run_dir_probe(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert run_dir_problem(tmp_path / "new" / "deeper") is None
    assert not (tmp_path / "new").exists()  # the probe leaves nothing behind
    assert list(tmp_path.iterdir()) == [a_file]
    assert "is a file, not a directory" in (run_dir_problem(a_file / "sub") or "")
    assert "is a file, not a directory" in (run_dir_problem(a_file) or "")
    if os.geteuid() != 0:  # root writes into a read-only directory anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert "cannot be written" in (run_dir_problem(locked / "runs") or "")


def test_the_invarlock_facts_mirror_the_installed_package() -> None:
    """Tiers, tier floors and gate names are copied into the pure campaign package; read the real ones without importing."""
    spec = find_spec("invarlock")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("invarlock is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    tiers = yaml.safe_load((root / "_data" / "runtime" / "tiers.yaml").read_text(encoding="utf-8"))
    assert set(TIERS) == {name for name, value in tiers.items() if isinstance(value, dict)}
    tree = ast.parse((root / "core" / "runner_pairing.py").read_text(encoding="utf-8"))
    floors = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "BOOTSTRAP_COVERAGE_REQUIREMENTS" for t in node.targets)
    )
    assert floors == TIER_FLOORS
    labels = json.loads(next(root.rglob("console_labels.json")).read_text(encoding="utf-8"))
    assert {label.strip().lower().replace(" ", "_") for label in labels} == set(DETECTORS)
    assert math.isfinite(min(f["replicates"] for f in TIER_FLOORS.values()))


# --------------------------------------------------------------------------- real sessions: exit 4, no traceback


def run_pytest(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd, capture_output=True, text=True, timeout=180
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "Traceback" not in output and "INTERNALERROR" not in output, output
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_bad_suite_files_and_options_are_usage_errors_in_a_real_session(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    assert_usage_error(run_pytest("--co", str(VALIDATION), "--suite", str(binary)), str(binary), "not UTF-8")
    assert_usage_error(run_pytest("--co", str(VALIDATION), "--models", ","), "--models ','", "names no model")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert_usage_error(
        run_pytest("--co", str(VALIDATION), "--run-dir", str(blocker / "runs")), f"--run-dir {blocker / 'runs'}", "is a file"
    )


def test_bad_options_are_usage_errors_before_xdist_starts_workers() -> None:
    assert_usage_error(run_pytest("--co", str(VALIDATION), "-n", "2", "--gpus", "8y80"), "--gpus '8y80'", "COUNTxGB")
    assert_usage_error(
        run_pytest("--co", str(VALIDATION), "--benchmarks", "kjv_cloze,nosuch_task"), "--benchmarks", "nosuch_task"
    )


SUITE_TEST = "def test_calibration(invarlock_item):\n    pass\n"


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["no-xdist", "xdist"])
def test_bad_options_are_usage_errors_when_the_session_activates_at_collection(tmp_path: Path, xdist: tuple[str, ...]) -> None:
    """No --suite and no conftest: the suite's tests activate the plugin while they are collected (rule 4)."""
    (tmp_path / "test_mine.py").write_text(SUITE_TEST)
    result = run_pytest("-q", "--tier", "bogus", *xdist, "test_mine.py", cwd=tmp_path)
    assert_usage_error(result, "--tier 'bogus'", "balanced")
