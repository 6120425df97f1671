"""The catalogue: one entry per edit type; spec grammar, canonical round trip, caps, versions, error messages."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.edits.catalogue import (
    CATALOGUE,
    DEFAULT_MAX_CAPS,
    ERROR_KINDS,
    FAMILIES,
    SCOPES,
    EditSpec,
    EditType,
    SpecError,
    max_caps_for,
    parse_spec,
)

scopes = st.sampled_from(SCOPES)
valid_specs = st.one_of(
    st.sampled_from(("noop", *ERROR_KINDS)).map(EditSpec),
    st.builds(EditSpec, st.just("quant_rtn"), bits=st.integers(2, 8), group=st.integers(1, 10**6), scope=scopes),
    st.builds(EditSpec, st.just("fp8"), variant=st.sampled_from(("e4m3", "e5m2")), scope=scopes),
    st.builds(EditSpec, st.just("fp4"), variant=st.sampled_from(("e2m1", "aggressive")), scope=scopes),
    st.builds(
        EditSpec,
        st.just("magnitude_prune"),
        fraction=st.floats(0, 1, exclude_min=True, exclude_max=True),
        scope=scopes,
    ),
    st.builds(EditSpec, st.just("lowrank_svd"), rank=st.integers(1, 10**6), scope=scopes),
)


def test_catalogue_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from pytest_invarlock.edits.catalogue import CATALOGUE, max_caps_for, parse_spec\n"
        "for entry in CATALOGUE.values():\n"
        "    spec = parse_spec(entry.example_spec)\n"
        "    spec.family, spec.edit_type.code_version, max_caps_for(entry.name)\n"
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("kind", CATALOGUE)
def test_every_entry_is_complete_and_its_example_parses_to_it(kind: str) -> None:
    entry = CATALOGUE[kind]
    assert entry.name == kind and entry.family in FAMILIES and entry.summary
    assert entry.kernel.count(":") == 1 and entry.code_version >= 1 and entry.max_caps >= 1
    spec = parse_spec(entry.example_spec)
    assert spec.type_name == kind and spec.edit_type is entry and spec.family == entry.family
    assert [name for name, _ in spec.params] == [p.name for p in entry.params]
    assert entry.form.count(":") == len(entry.params)


def test_the_error_injections_and_the_noop_are_catalogued() -> None:
    # the ten must-detect injections, then the evidence-pack harness's three informational ones
    assert len(ERROR_KINDS) == 13 and "nan_injection" in ERROR_KINDS and "weight_tying_break" in ERROR_KINDS
    assert ERROR_KINDS[-3:] == ("rmt_norm_noise", "spectral_moderate_scale", "ve_mlp_scale_skew")
    assert [kind for kind, entry in CATALOGUE.items() if entry.family == "noop"] == ["noop"]


@pytest.mark.parametrize(
    ("kind", "caps"),
    [
        ("quant_rtn", 15),
        ("fp8", 15),
        ("lowrank_svd", 25),
        ("fp4", 10),
        ("magnitude_prune", 10),
        ("noop", 10),
        ("extreme_quant", 10),
        (" Quant_RTN ", 15),
        ("not_a_kind", DEFAULT_MAX_CAPS),
    ],
)
def test_max_caps_come_from_the_entry(kind: str, caps: int) -> None:
    assert max_caps_for(kind) == caps


def test_edit_type_refuses_a_bad_family_or_kernel_name() -> None:
    with pytest.raises(ValueError, match="family must be one of"):
        EditType("x", "clean", "m:f", "x")
    with pytest.raises(ValueError, match="module:function"):
        EditType("x", "edit", "pytest_invarlock.edits.kernels.quant.quant_rtn", "x")


def test_edit_spec_is_an_immutable_hashable_value() -> None:
    spec = EditSpec("quant_rtn", bits=4, group=32, scope="all")
    assert spec == parse_spec("quant_rtn:4:32:all") and hash(spec) == hash(parse_spec("quant_rtn:4:32:all"))
    assert spec != EditSpec("quant_rtn", bits=4, group=32, scope="ffn")
    assert (spec.bits, spec.group, spec.scope) == (4, 32, "all")
    assert spec.arguments == {"bits": 4, "group": 32, "scope": "all"}
    assert repr(spec) == "EditSpec('quant_rtn', bits=4, group=32, scope='all')"
    assert pickle.loads(pickle.dumps(spec)) == spec
    with pytest.raises(AttributeError, match="immutable"):
        spec.bits = 8  # type: ignore[misc]
    with pytest.raises(AttributeError, match="no parameter 'rank'"):
        _ = spec.rank


@pytest.mark.parametrize(
    ("kind", "params"),
    [("quant_rtn", {"bits": 4, "group": 32}), ("noop", {"scope": "ffn"}), ("fp8", {"format": "e4m3", "scope": "ffn"})],
)
def test_edit_spec_needs_exactly_the_entry_parameters(kind: str, params: dict[str, object]) -> None:
    with pytest.raises(TypeError, match="takes parameters"):
        EditSpec(kind, **params)


def test_edit_spec_of_an_unknown_kind_suggests_one() -> None:
    with pytest.raises(SpecError, match="Did you mean 'lowrank_svd'"):
        EditSpec("lowrank_sdv")


@settings(max_examples=300, deadline=None)
@given(valid_specs)
def test_printed_spec_parses_back_to_itself(spec: EditSpec) -> None:
    text = str(spec)
    assert parse_spec(text) == spec
    assert str(parse_spec(text)) == text


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("magnitude_prune:0.50:ffn", "magnitude_prune:0.5:ffn"),
        ("  quant_rtn:08:128:all ", "quant_rtn:8:128:all"),
        ("magnitude_prune:.1:attn", "magnitude_prune:0.1:attn"),
        ("lowrank_svd:0032:all", "lowrank_svd:32:all"),
    ],
)
def test_spellings_normalise_to_one_canonical_string(text: str, canonical: str) -> None:
    assert str(parse_spec(text)) == canonical


def test_parsed_fields_are_typed() -> None:
    assert parse_spec("quant_rtn:4:32:all") == EditSpec("quant_rtn", bits=4, group=32, scope="all")
    assert parse_spec("magnitude_prune:0.1:ffn").fraction == 0.1
    assert parse_spec("fp8:e5m2:attn") == EditSpec("fp8", variant="e5m2", scope="attn")


@pytest.mark.parametrize(
    ("text", "family"),
    [("noop", "noop"), ("nan_injection", "error"), ("weight_tying_break", "error"), ("fp4:e2m1:ffn", "edit")],
)
def test_family(text: str, family: str) -> None:
    assert parse_spec(text).family == family


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("quant_rtn:banana:ffn", "BITS", "banana"),
        ("quant_rtn:banana:128:ffn", "BITS", "banana"),
        ("quant_rtn:9:128:ffn", "BITS", "9"),
        ("quant_rtn:1:128:ffn", "BITS", "1"),
        ("quant_rtn:-4:128:ffn", "BITS", "-4"),
        ("quant_rtn:8:0:ffn", "GROUP", "0"),
        ("quant_rtn:8:128", "arity", "8:128"),
        ("quant_rtn:8:128:ffn:extra", "arity", "8:128:ffn:extra"),
        ("magnitude_prune:1.5:ffn", "FRACTION", "1.5"),
        ("magnitude_prune:0:ffn", "FRACTION", "0"),
        ("magnitude_prune:1:ffn", "FRACTION", "1"),
        ("magnitude_prune:nan:ffn", "FRACTION", "nan"),
        ("magnitude_prune:0.1:mlp", "SCOPE", "mlp"),
        ("fp8:e3m4:ffn", "FORMAT", "e3m4"),
        ("fp4:nf4:ffn", "VARIANT", "nf4"),
        ("lowrank_svd:0:all", "RANK", "0"),
        ("lowrank_svd:2.5:all", "RANK", "2.5"),
        ("noop:1", "arity", "1"),
        ("nan_injection:ffn", "arity", "ffn"),
        ("quant_rtm:8:128:ffn", "KIND", "quant_rtm"),
        ("", "KIND", ""),
    ],
)
def test_bad_spec_names_the_field_value_form_and_example(text: str, field: str, value: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    error = caught.value
    assert (error.field, error.value) == (field, value)
    message = str(error)
    assert repr(text.strip()) in message and repr(value) in message
    assert field in message or field == "arity"
    example = re.search(r"e\.g\. (\S+)$", message)
    assert example is not None and parse_spec(example.group(1))  # the suggested example is itself valid


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("quant_rtm:8:128:ffn", "quant_rtn"),
        ("nan_injecton", "nan_injection"),
        ("magnitude_prun:0.1:ffn", "magnitude_prune"),
    ],
)
def test_unknown_kind_suggests_the_closest(typo: str, suggestion: str) -> None:
    with pytest.raises(SpecError, match=f"Did you mean '{suggestion}'"):
        parse_spec(typo)


def test_spec_error_is_a_value_error_that_survives_pickling() -> None:
    with pytest.raises(ValueError, match="quant_rtn:BITS:GROUP:SCOPE") as caught:
        parse_spec("quant_rtn:x:1:ffn")
    revived = pickle.loads(pickle.dumps(caught.value))
    assert (str(revived), revived.field, revived.value) == (str(caught.value), "BITS", "x")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="quantrp_fimsv8e4m0.1:2l", max_size=24))
def test_any_text_either_parses_canonically_or_raises_spec_error(text: str) -> None:
    try:
        spec = parse_spec(text)
    except SpecError:
        return
    assert parse_spec(str(spec)) == spec
