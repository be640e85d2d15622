"""The one layer grammar shared by verify, build, interpret and ablate; head names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.cli import main
from engine.core.layers import format_layers, head_name, parse_head_name, parse_layers
from engine.errors import UserError

pytestmark = pytest.mark.unit


def test_bare_number_means_last_k_everywhere():
    assert parse_layers("4", 12) == [8, 9, 10, 11]
    assert parse_layers(4, 12) == [8, 9, 10, 11]
    assert parse_layers("last4", 12) == [8, 9, 10, 11]
    # the fault: interpret read `4` as layer 4; with stored layers it is the last four too
    assert parse_layers("4", 12, available=[8, 9, 10, 11]) == [8, 9, 10, 11]


def test_lists_ranges_all():
    assert parse_layers("8,9,10", 12) == [8, 9, 10]
    assert parse_layers("8-11", 12) == [8, 9, 10, 11]
    assert parse_layers("2,8-9", 12) == [2, 8, 9]
    assert parse_layers("all", 3) == [0, 1, 2]
    assert parse_layers(None, 3) == [0, 1, 2]
    assert parse_layers("all", 12, available=[10, 11]) == [10, 11]
    assert parse_layers(None, 12, available=[11, 10]) == [10, 11]


@pytest.mark.parametrize(
    "arg, match",
    [
        ("0", "K must be in 1..12"),
        ("13", "K must be in 1..12"),
        ("last0", "K must be in 1..12"),
        ("1-x", "cannot read"),
        ("9-3", "empty"),
        ("5,12", r"do not exist"),
        (",", "no layer"),
        ("foo", "cannot read"),
    ],
)
def test_bad_layers_name_the_problem_and_the_grammar(arg, match):
    with pytest.raises(UserError, match=match) as e:
        parse_layers(arg, 12)
    assert "lastK" in str(e.value) and "\n" not in str(e.value)


def test_unavailable_layers_are_refused_naming_the_stored_ones():
    with pytest.raises(UserError, match=r"layers \[7\] are not stored \(stored: \[8, 9\]\)"):
        parse_layers("7,8", 12, available=[8, 9])
    with pytest.raises(UserError, match="not stored"):
        parse_layers("4", 12, available=[10, 11])


@given(st.sets(st.integers(0, 23), min_size=1), st.integers(24, 40))
def test_format_round_trips(layers, n_layers):
    layers = sorted(layers)
    assert parse_layers(format_layers(layers, n_layers), n_layers) == layers


@given(st.integers(0, 99), st.integers(0, 99))
def test_head_names_round_trip(layer, head):
    assert parse_head_name(head_name(layer, head)) == (layer, head)


def test_bad_head_name():
    with pytest.raises(UserError, match="L10H3"):
        parse_head_name("10.3")


def test_verify_and_build_share_the_grammar(capsys, tmp_path):
    for cmd in (
        ["verify", "--model", "tiny-test"],
        [
            "build",
            "--model",
            "tiny-test",
            "--images",
            "synthetic:2",
            "--store",
            str(tmp_path / "s"),
        ],
    ):
        assert (
            main([*cmd, "--layers", "1-x", *([] if cmd[0] == "verify" else ["--no-progress"])]) == 2
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("cannot read '1-x'" in line and "lastK" in line for line in err)
    assert not (tmp_path / "s").exists()
