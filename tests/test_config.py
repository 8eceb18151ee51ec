"""Configuration: every bad value, file or name is a ConfigError naming the key (issue 10).

The property tests throw generated TOML documents, raw bytes and environment values at the
loader and assert the one contract: a Config or a ConfigError, no other exception; and valid
values come back unchanged through TOML and through the environment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotguard.agent import _event_env
from spotguard.config import (
    NOT_CONFIG,
    Bytes,
    Config,
    ConfigError,
    Seconds,
    env_names,
    from_mapping,
    load,
)
from spotguard.events import Event, EventKind
from spotguard.units import parse_bytes, parse_duration

SECTIONS = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}
FIELDS = [
    (section, f, typing.get_type_hints(cls)[f.name])
    for section, cls in SECTIONS.items()
    for f in dataclasses.fields(cls)
]
RANGED = [(s, f) for s, f, _ in FIELDS if "range" in f.metadata]


def toml_value(value: Any) -> str:
    """Our own tiny TOML writer for the values a Config holds (tomllib only reads)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's, except that TOML wants DEL escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def toml_document(sections: dict[str, dict[str, Any]]) -> str:
    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {toml_value(v)}\n" for key, v in values.items())
        for name, values in sections.items()
    )


def load_text(tmp_path: Path, text: str | bytes) -> Config:
    path = tmp_path / "config.toml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load(path, env={})


# -- the table's rows ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[imds]\nurl = '\xff\xfe'\n", "not UTF-8"),
        ("a = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("a = " + "{b = " * 5000 + "1" + "}" * 5000, "nested too deeply"),
        ("[imds]\nattempts = " + "9" * 5000, "imds.attempts: an integer of 5000 digits"),
        ("[hibernate]\nfixed_overhead = " + "9" * 5000, "hibernate.fixed_overhead"),
        ("[reclaim]\nstep = " + "9" * 300, "reclaim.step: size must be 0.."),
        ("[idle]\nmax_load = " + "9" * 300, "idle.max_load: expected a number of sensible"),
        ("[imds]\nattempts = " + "9" * 300, "imds.attempts: must be 1..10, got an integer"),
        ("[reclaim\nstep = 1", "not valid TOML"),
    ],
)
def test_raw_files_are_config_errors(tmp_path: Path, content: str | bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_text(tmp_path, content)


def test_a_directory_as_the_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a directory where a file should be"):
        load(tmp_path, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "absent.toml", env={})


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="larger than"):
        load_text(tmp_path, "# " + "x" * (2 << 20))


def test_a_typo_in_a_variable_names_the_closest_key() -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping({}, env={"SPOTGUARD_HIBERNATION_MODE": "none"})
    assert "SPOTGUARD_HIBERNATION_MODE" in str(caught.value)
    assert "did you mean SPOTGUARD_HIBERNATE_MODE (hibernate.mode)" in str(caught.value)
    with pytest.raises(ConfigError, match="SPOTGUARD_IMDS_ALLOW_V1"):
        from_mapping({}, env={"SPOTGUARD_IMDS_ALLOWV1": "yes"})


def test_a_typo_in_a_file_key_names_the_closest_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key reclaim\.steps; did you mean step"):
        load_text(tmp_path, "[reclaim]\nsteps = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[hibernation\]; did you mean"):
        load_text(tmp_path, "[hibernation]\nmode = 'none'\n")


def test_variables_that_are_not_settings_are_left_alone() -> None:
    """What a hook is given must not break a `spotguard status` the hook runs."""
    notice = Event(EventKind.SPOT_INTERRUPTION, "id-1", "stop", 1.0, "")
    hook_env = {**_event_env(notice, "spot notice"), "SPOTGUARD_HOOK": "pre-hibernate"}
    assert set(hook_env) <= NOT_CONFIG
    assert from_mapping({}, env={**hook_env, "SPOTGUARD_DEFER_SWAP": "1"}) == Config()
    assert not NOT_CONFIG & set(env_names())


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("hibernate", "fixed_overhead"),
        ("hibernate", "deadline_margin"),
        ("reclaim", "light_budget"),
        ("reclaim", "deep_budget"),
        ("reclaim", "repeat_after"),
        ("idle", "max_psi_memory"),
    ],
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_from_toml(
    tmp_path: Path, section: str, key: str, value: float
) -> None:
    text = f"[{section}]\n{key} = {value}\n"  # nan, inf, -inf: TOML spells them as Python
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: .*(finite|must be)"):
        load_text(tmp_path, text)


@pytest.mark.parametrize(("section", "f"), RANGED, ids=[f"{s}.{f.name}" for s, f in RANGED])
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_every_numeric_key_refuses_nan_and_infinity_from_the_environment(
    section: str, f: dataclasses.Field[Any], text: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^{section}\.{f.name}: "):
        from_mapping({}, env={f"SPOTGUARD_{section}_{f.name}".upper(): text})


def test_every_numeric_key_has_a_range() -> None:
    numeric = [(s, f.name) for s, f, hint in FIELDS if hint in (int, float, Bytes, Seconds)]
    assert numeric == [(s, f.name) for s, f in RANGED]
    for section, f in RANGED:
        lo, hi, _ = f.metadata["range"]
        below = lo - 1 if lo >= 1 else -1
        with pytest.raises(ConfigError, match=rf"{section}\.{f.name}"):
            from_mapping({section: {f.name: below}}, env={})
        with pytest.raises(ConfigError, match=rf"{section}\.{f.name}: .*must be .*\.\."):
            from_mapping({section: {f.name: hi * 2 + 1}}, env={})


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        *[(w, True) for w in ("true", "yes", "on", "1", "TRUE", "Yes", " On ")],
        *[(w, False) for w in ("false", "no", "off", "0", "FALSE", "No", "OFF")],
    ],
)
def test_booleans_take_every_usual_word(word: str, expected: bool) -> None:
    assert from_mapping({}, env={"SPOTGUARD_IMDS_ALLOW_V1": word}).imds.allow_v1 is expected


def test_a_bad_boolean_says_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"imds\.allow_v1: expected one of true/yes/on/1/false"):
        from_mapping({}, env={"SPOTGUARD_IMDS_ALLOW_V1": "maybe"})


def test_nul_in_a_path_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"agent\.state_file: must not contain a NUL"):
        from_mapping({"agent": {"state_file": "/var/lib/a\0b"}}, env={})


# -- property tests ---------------------------------------------------------------------------

NAMES = sorted({*env_names(), "SPOTGUARD_HIBERNATION_MODE", "SPOTGUARD_IMDS_ALLOWV1"})
ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
NUMERIC_TEXT = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["nan", "-0", "1e999", "9" * 5000, "0x10", "1_000", "30s", "2G", "max", ""]),
    st.from_regex(r"\A-?[0-9]{0,30}(\.[0-9]{0,5})?(e[+-]?[0-9]{1,4})?[ a-zA-Z]{0,3}\Z"),
)
TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    ANY_TEXT,
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=2),
    max_leaves=6,
)
KEYS = st.sampled_from([(s, f.name) for s, f, _ in FIELDS]) | st.tuples(
    st.sampled_from([*SECTIONS, "hibernation"]), ANY_TEXT
)


def toml_any(value: Any) -> str:
    """TOML for any generated value, NaN, inf, tables and all."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_any(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_any(v) for v in value) + "]"
    return toml_value(value)


def assert_config_or_error(build: Callable[[], Config]) -> None:
    """The contract: a Config, or a ConfigError with a message; anything else fails the test."""
    outcome: Config | ConfigError
    try:
        outcome = build()
    except ConfigError as exc:
        outcome = exc
    assert isinstance(outcome, Config) or str(outcome)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for every example: @given tests cannot take function-scoped tmp_path."""
    return tmp_path_factory.mktemp("config")


@given(st.dictionaries(st.sampled_from(NAMES), NUMERIC_TEXT | ANY_TEXT, max_size=4))
def test_any_environment_is_a_config_or_a_config_error(env: dict[str, str]) -> None:
    assert_config_or_error(lambda: from_mapping({}, env=env))


@given(st.lists(st.tuples(KEYS, TOML_VALUES), max_size=4))
def test_any_toml_document_is_a_config_or_a_config_error(
    scratch: Path, entries: list[tuple[tuple[str, str], Any]]
) -> None:
    text = "".join(
        f"[{json.dumps(section)}]\n{json.dumps(key)} = {toml_any(value)}\n"
        for (section, key), value in entries
    )
    assert_config_or_error(lambda: load_text(scratch, text))


@given(st.binary(max_size=200))
def test_any_bytes_as_the_file_are_a_config_or_a_config_error(
    scratch: Path, content: bytes
) -> None:
    assert_config_or_error(lambda: load_text(scratch, content))


# Valid values, derived from the fields: ranges from their metadata, words from the rules.
SAFE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\0"))
NAME = st.text(st.characters(categories=["L", "N", "P", "S"], exclude_characters=",./"), min_size=1)
SPECIAL: dict[str, st.SearchStrategy[Any]] = {
    # Parsed only, never connected to (conftest's _loopback_only would fail the test).
    "url": st.sampled_from(["http://169.254.169.254", "http://[fd00:ec2::254]", "https://x"]),
    "webhook_url": st.sampled_from(["", "https://hooks.example/x"]),
    "root": st.sampled_from(["/", "/host"]),
    "cgroup_root": st.sampled_from(["/sys/fs/cgroup", "/sys/fs/cgroup/memory"]),
    "backend": st.sampled_from(["auto", "v2", "swap.reclaim", "v1", "drop_caches"]),
    "mode": st.sampled_from(["ec2", "local", "none"]),
    "local_command": st.lists(NAME, min_size=1, max_size=3).map(tuple),
    "event_bus": st.sampled_from(
        ["", "default", "arn:aws:events:us-east-1:123456789012:event-bus/x"]
    ),
}


def valid_value(name: str, f: dataclasses.Field[Any], hint: Any) -> st.SearchStrategy[Any]:
    if name in SPECIAL:
        return SPECIAL[name]
    if "range" in f.metadata:
        lo, hi, _ = f.metadata["range"]
        if hint in (int, Bytes):
            return st.integers(math.ceil(lo), int(hi))
        return st.floats(lo, hi)
    if hint is bool:
        return st.booleans()
    if hint is str:
        return SAFE_TEXT
    return st.lists(NAME, max_size=3).map(tuple)


@st.composite
def valid_configs(draw: st.DrawFn) -> Config:
    sections = {}
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        values = {
            f.name: draw(valid_value(f.name, f, hints[f.name])) for f in dataclasses.fields(cls)
        }
        sections[name] = cls(**values)
    config = Config(**sections)
    # The two rules between keys: keep the drawn values, order them.
    agent = dataclasses.replace(
        config.agent,
        slow_poll_interval=max(config.agent.slow_poll_interval, config.agent.poll_interval),
    )
    reclaim = dataclasses.replace(
        config.reclaim, emergency_psi=max(config.reclaim.emergency_psi, config.reclaim.idle_psi)
    )
    return dataclasses.replace(config, agent=agent, reclaim=reclaim).validate()


@given(valid_configs())
def test_valid_values_round_trip_through_toml(scratch: Path, config: Config) -> None:
    """`config show --json` written back as TOML is the same configuration."""
    assert load_text(scratch, toml_document(config.to_dict())) == config


@given(valid_configs())
def test_valid_values_round_trip_through_the_environment(config: Config) -> None:
    env = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            text = ",".join(value) if isinstance(value, list) else str(value)
            env[f"SPOTGUARD_{section}_{key}".upper()] = text
    assert from_mapping({}, env=env) == config


@pytest.mark.parametrize(
    "value",
    [10**5000, "9" * 5000, "1e999", "1e999m", math.nan, math.inf, -1, "nan", "-5s"],
    ids=["int-5000", "str-5000", "1e999", "1e999m", "nan", "inf", "-1", "str-nan", "-5s"],
)
def test_units_refuse_what_would_overflow_later(value: Any) -> None:
    """The issue's 29 OverflowError tracebacks came from here: now each is a ValueError."""
    for parse in (parse_bytes, parse_duration):
        if isinstance(value, float) and parse is parse_bytes:
            continue  # parse_bytes takes int | str; floats are the config loader's business
        with pytest.raises(ValueError, match=r"must be|not a"):
            parse(value)


def test_units_keep_exact_sizes() -> None:
    assert parse_bytes(str((1 << 53) + 1)) == (1 << 53) + 1
    assert parse_bytes("1.5G") == 3 << 29
    assert parse_duration("1e-05") == 1e-05
    assert parse_duration("2m") == 120.0


def test_the_ci_profile_is_reproducible_and_bounded() -> None:
    ci = settings.get_profile("ci")
    assert ci.derandomize
    assert ci.database is None
    assert ci.max_examples <= 100
