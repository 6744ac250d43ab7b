"""Model patterns are globs over the resolved model's names; scope names are checked."""

from __future__ import annotations

import pytest

from app.keys.scopes import ModelAccess, Scope, decode_scopes, encode_scopes, parse_scopes, subjects


def _line(requested: str, line: str = "babylon-agent", step: int = 3) -> tuple[str, ...]:
    return subjects(requested=requested, model_name=line, step=step, base_model=None)


@pytest.mark.parametrize(
    "requested",
    [
        "babylon-agent",
        "babylon-agent:latest",
        "babylon-agent:production",
        "babylon-agent:step3",
        "ftckpt-abc",
        "ftjob-abc",
        "wandb-artifact:///e/p/babylon-agent:step3",
    ],
)
def test_a_line_pattern_allows_every_name_of_that_lines_checkpoints(requested: str) -> None:
    assert ModelAccess.of(["babylon-agent:*"]).allows(_line(requested))
    assert ModelAccess.of(["babylon-agent"]).allows(_line(requested))


def test_a_line_pattern_does_not_allow_another_line_whatever_it_is_called() -> None:
    access = ModelAccess.of(["babylon-agent:*"])
    assert not access.allows(_line("babylon-agent-v2", line="babylon-agent-v2"))
    # the raw name is not what is matched: a checkpoint id of another line stays out
    assert not access.allows(_line("ftckpt-of-other", line="other"))
    assert ModelAccess.of(["babylon-agent*"]).allows(_line("babylon-agent-v2", line="babylon-agent-v2"))


def test_an_alias_pattern_allows_that_alias_only() -> None:
    access = ModelAccess.of(["babylon-agent:production"])
    assert access.allows(_line("babylon-agent:production"))
    assert not access.allows(_line("babylon-agent:step3"))
    assert not access.allows(_line("babylon-agent"))


def test_base_models_match_by_their_own_name() -> None:
    base = subjects(requested="OpenPipe/Qwen3-14B-Instruct", model_name=None, step=None, base_model=None)
    assert ModelAccess.of(["OpenPipe/*"]).allows(base)
    assert not ModelAccess.of(["babylon-agent:*"]).allows(base)


def test_no_patterns_allow_all_and_an_empty_list_allows_none() -> None:
    assert ModelAccess.of(None).allows(("anything",))
    assert not ModelAccess.of([]).allows(("anything",))


def test_scope_names_round_trip_and_unknown_ones_are_refused() -> None:
    scopes = parse_scopes(["Inference", " training "])
    assert scopes == {Scope.inference, Scope.training}
    assert decode_scopes(encode_scopes(scopes)) == scopes
    with pytest.raises(ValueError, match="unknown scope 'root'"):
        parse_scopes(["root"])


def test_the_settings_know_the_same_scopes() -> None:
    # app/config.py sits below app/keys and repeats the names; they must not drift apart
    from app.config import SCOPE_NAMES

    assert set(SCOPE_NAMES) == {s.value for s in Scope}
