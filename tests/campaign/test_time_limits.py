"""Time limits per kind and size class (pure): defaults, shares, downloads, suite and command-line overrides."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.checks import SuiteError
from pytest_invarlock.campaign.time_limits import (
    DOWNLOAD_BASE_S,
    DOWNLOAD_S_PER_GB,
    LIMIT_KINDS,
    REFERENCE_S,
    limit_s,
    parse_command_line,
)


def test_the_70b_class_gets_the_b200_reference_and_smaller_classes_a_share_of_the_work():
    suite = load_suite("b200")
    large = next(m for m in suite.models if m.size_class == "70b")
    small = next(m for m in suite.models if m.size_class == "7b")
    assert suite.timeout_s("calibration", large) == REFERENCE_S == 21600
    assert suite.timeout_s("benchmark", large) == 21600
    assert suite.timeout_s("clean", large) == suite.timeout_s("error", large) == 10800  # one evaluated side
    assert suite.timeout_s("edit", large) == 5400
    assert suite.timeout_s("calibration", small) == 7200
    tiny = load_suite("tiny").models[0]
    assert load_suite("tiny").timeout_s("calibration", tiny) == 600 and load_suite("tiny").timeout_s("clean", tiny) == 300


def test_a_download_is_charged_by_its_size():
    model = load_suite("b200").models[-1]
    assert load_suite("b200").timeout_s("download", model, weights_gb=134.7) == DOWNLOAD_BASE_S + DOWNLOAD_S_PER_GB * 134.7
    assert load_suite("b200").timeout_s("download", model, weights_gb=0) == DOWNLOAD_BASE_S


def test_the_command_line_wins_exactly_then_the_suite_above_its_floor_then_the_class():
    suite = load_suite("tiny")
    model = suite.models[0]
    floored = dataclasses.replace(suite, timeouts={"clean": 5, "default": 1000})
    assert floored.timeout_s("clean", model) == 300  # the suite's 5 s is below the tiny class's floor
    assert floored.timeout_s("stress", model) == 1000  # the suite's default
    assert floored.timeout_s("clean", model, command_line={"clean": 5}) == 5  # taken as given
    assert floored.timeout_s("stress", model, command_line={"default": 7}) == 7
    assert floored.timeout_s("stress", model, command_line={"clean": 5}) == 1000


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["clean=900"], {"clean": 900.0}),
        (["3600"], {"default": 3600.0}),
        (["calibration=60,download=7200", "edit=30"], {"calibration": 60.0, "download": 7200.0, "edit": 30.0}),
    ],
)
def test_command_line_values_parse(values, expected):
    assert parse_command_line(values) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("cleen=900", "unknown kind 'cleen'"),
        ("clean=-5", "must be a positive number of seconds"),
        ("clean=soon", "must be a positive number of seconds"),
        ("inf", "must be a positive number of seconds"),
    ],
)
def test_bad_command_line_values_say_what_and_how(value, message):
    with pytest.raises(ValueError, match=message):
        parse_command_line([value])


def test_every_kind_has_a_limit_and_unknown_kinds_are_refused():
    model = load_suite("tiny").models[0]
    for kind in LIMIT_KINDS:
        assert limit_s(kind, class_s=600, floor_s=300, weights_gb=1, suite={}, command_line={}) > 0
    with pytest.raises(ValueError, match="no time limit is defined for 'nap'"):
        load_suite("tiny").timeout_s("nap", model)


def test_suites_may_name_shared_work_and_refuse_unknown_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmodels: [tiny-kjv]\nscenarios: [calibration]\ntimeouts: {download: 99, edit: 400}\n")
    suite = load_suite(str(path))
    assert suite.timeout_s("edit", suite.models[0]) == 400
    path.write_text("name: s\nmodels: [tiny-kjv]\nscenarios: [calibration]\ntimeouts: {downlaod: 99}\n")
    with pytest.raises(SuiteError, match="downlaod"):
        load_suite(str(path))
