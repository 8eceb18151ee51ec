"""Configuration: a TOML file, then ``SPOTGUARD_<SECTION>_<KEY>`` overrides, validated up front.

Every section is a frozen dataclass; the loader derives keys and types from the fields, so a
new setting is one line here, and every numeric one carries its allowed range (`ranged`). An
unknown key or variable, a bad value or an unreadable file raises ConfigError naming it and
saying what is allowed; no other exception leaves `load`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from spotguard.hostfs import read_bounded
from spotguard.units import MAX_BYTES, parse_bytes, parse_duration, short

DEFAULT_PATH = Path("/etc/spotguard/config.toml")
MAX_FILE_BYTES = 1 << 20
_LONG_DIGITS = re.compile(r"[0-9_]{1000,}")
_HEADER = re.compile(r"(?m)^\s*\[\s*([^\]\s]+)\s*\]")
ENV_PREFIX = "SPOTGUARD_"
# Short names people already know from the design card.
ENV_ALIASES = {"SPOTGUARD_IMDS_URL": ("imds", "url"), "SPOTGUARD_ROOT": ("agent", "root")}
# SPOTGUARD_* variables that are not settings: what hooks are given (a hook may well run
# `spotguard status`), and the image bake's switch for the swap setup script.
NOT_CONFIG = frozenset(
    {
        "SPOTGUARD_CONFIG",
        "SPOTGUARD_HOOK",
        "SPOTGUARD_REASON",
        "SPOTGUARD_EVENT_KIND",
        "SPOTGUARD_EVENT_ID",
        "SPOTGUARD_ACTION",
        "SPOTGUARD_DEADLINE",
        "SPOTGUARD_DEFER_SWAP",
    }
)

Bytes = typing.NewType("Bytes", int)
Seconds = typing.NewType("Seconds", float)
T = TypeVar("T")


def ranged(default: T, lo: float, hi: float, unit: str = "") -> T:
    """A numeric field with its allowed range, checked on load (`Config.validate`)."""
    return field(default=default, metadata={"range": (lo, hi, unit)})


class ConfigError(ValueError):
    """A bad configuration; the message names the key."""


@dataclass(frozen=True, slots=True)
class ImdsConfig:
    url: str = "http://169.254.169.254"
    allow_v1: bool = False
    token_ttl: Seconds = ranged(Seconds(21600.0), 1, 21600, " s")
    connect_timeout: Seconds = ranged(Seconds(1.0), 0.01, 60, " s")
    read_timeout: Seconds = ranged(Seconds(2.0), 0.01, 60, " s")
    attempts: int = ranged(3, 1, 10)

    def validate(self) -> None:
        _check(self.url.startswith(("http://", "https://")), "imds.url", "must be an http URL")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    root: str = "/"
    # the spot notice: every poll
    poll_interval: Seconds = ranged(Seconds(1.0), 0.05, 60, " s")
    # rebalance, scheduled events, ASG: minutes ahead
    slow_poll_interval: Seconds = ranged(Seconds(5.0), 0.05, 600, " s")
    state_file: str = "/var/lib/spotguard/state.json"
    hook_dir: str = "/etc/spotguard/hooks"
    hook_timeout: Seconds = ranged(Seconds(10.0), 0.01, 3600, " s")
    webhook_url: str = ""
    webhook_attempts: int = ranged(3, 1, 10)
    metrics_port: int = ranged(0, 0, 65535, " (0: off)")
    webhook_allow_link_local: bool = False  # true: the webhook may target 169.254/16, fe80::/10
    metrics_address: str = "127.0.0.1"
    unhealthy_after: int = ranged(5, 1, 100_000, " polls")
    resume_jump: Seconds = ranged(Seconds(10.0), 0.01, 86400, " s")

    def validate(self) -> None:
        _check(self.root.startswith("/"), "agent.root", "must be an absolute path")
        _check(
            self.slow_poll_interval >= self.poll_interval,
            "agent.slow_poll_interval",
            "must be >= agent.poll_interval",
        )
        _check(
            self.webhook_url == "" or self.webhook_url.startswith(("http://", "https://")),
            "agent.webhook_url",
            "must be empty or an http URL",
        )
        _check(
            self.webhook_url == "" or _names_host(self.webhook_url),
            "agent.webhook_url",
            "must name a host",
        )


@dataclass(frozen=True, slots=True)
class IdleConfig:
    """When the host counts as idle: the RFC's test (least idle CPU >= 95 %), held for 10 s
    where the RFC's daemon waited 30 s. The light reclaim it opens stops at the first sign of
    pressure, so a short lull costs little, while at 8 GiB the 20 s more of reclaim before a
    notice were what kept the image from being swapped inside the window (issue 11)."""

    cpu_idle_percent: float = ranged(95.0, 0.01, 100, " %")
    duration: Seconds = ranged(Seconds(10.0), 0, 7 * 86400, " s")
    max_load: float = ranged(0.0, 0, 100_000, " (0: ignore the load average)")
    max_psi_memory: float = ranged(1.0, 0, 100, " %")  # "some" avg10
    max_psi_io: float = ranged(5.0, 0, 100, " %")
    max_io_bytes_per_s: Bytes = ranged(Bytes(20 << 20), 0, MAX_BYTES, " bytes/s")
    # The CPU of every cgroup but the agent's (% of one CPU, summed; cgroup v2): below it the
    # workload is quiet even where the least idle CPU is not (emulation, the agent itself).
    max_workload_cpu_percent: float = ranged(10.0, 0, 100_000, " %")


@dataclass(frozen=True, slots=True)
class ReclaimConfig:
    backend: str = "auto"  # auto | v2 | swap.reclaim | v1 | drop_caches
    cgroup_root: str = "/sys/fs/cgroup"
    background: tuple[str, ...] = ("system.slice", "batch.slice")
    protected: tuple[str, ...] = ()
    step: Bytes = ranged(Bytes(128 << 20), 1, 1 << 40, " bytes")
    step_percent: float = ranged(2.0, 0.01, 100, " %")
    # % memory/io "some" avg10 that ends an idle-time stage
    idle_psi: float = ranged(0.1, 0, 100, " %")
    emergency_psi: float = ranged(20.0, 0, 100, " %")
    light_budget: Seconds = ranged(Seconds(60.0), 0.01, 86400, " s")
    deep_budget: Seconds = ranged(Seconds(300.0), 0.01, 86400, " s")
    write_timeout: Seconds = ranged(Seconds(5.0), 0.01, 600, " s")
    allow_drop_caches: bool = False
    repeat_after: Seconds = ranged(Seconds(600.0), 0, 7 * 86400, " s")
    # after a light run stopped by pressure (or another reclaim's lock): doubled per such run
    retry_after: Seconds = ranged(Seconds(15.0), 0, 7 * 86400, " s")
    # Idle reclaim swaps the background cgroups' anonymous memory too, after their page cache:
    # what is swapped before a notice is not shrunk inside the 2-minute window (issue 11).
    # false: page cache only, a faster wake-up for the background cgroups.
    idle_swap: bool = True

    def validate(self) -> None:
        backends = ("auto", "v2", "swap.reclaim", "v1", "drop_caches")
        _check(self.backend in backends, "reclaim.backend", f"must be one of {backends}")
        _check(self.cgroup_root.startswith("/"), "reclaim.cgroup_root", "must be absolute")
        for key in ("background", "protected"):
            for name in getattr(self, key):
                _check(
                    name.strip("/") != "" and ".." not in Path(name).parts,
                    f"reclaim.{key}",
                    f"bad cgroup {name!r}: a name under reclaim.cgroup_root, without '..'",
                )
        _check(self.emergency_psi >= self.idle_psi, "reclaim.emergency_psi", "must be >= idle_psi")


@dataclass(frozen=True, slots=True)
class HibernateConfig:
    mode: str = "ec2"  # ec2 | local | none
    swap_margin: float = ranged(1.1, 1.0, 10, " (x the image)")
    deadline_margin: Seconds = ranged(Seconds(20.0), 0, 3600, " s")
    # freeze, API call, device suspend
    fixed_overhead: Seconds = ranged(Seconds(10.0), 0, 3600, " s")
    # bytes/s the image is written at
    swap_bandwidth: Bytes = ranged(Bytes(100 << 20), 1 << 20, 1 << 40, " bytes/s")
    # 0: "small" means within 1.2x the kernel's floor
    small_image: Bytes = ranged(Bytes(0), 0, MAX_BYTES, " bytes")
    # bytes/s the kernel preallocates image page frames at, until a hibernation here measures
    # it (its "Allocated" line): fast on real CPUs, ~74 MB/s under QEMU TCG (issue 11).
    prealloc_bandwidth: Bytes = ranged(Bytes(1 << 30), 1 << 20, 1 << 40, " bytes/s")
    pre_hibernate_budget: Seconds = ranged(Seconds(5.0), 0, 600, " s")
    region: str = ""  # "" : from the metadata service
    local_command: tuple[str, ...] = ("systemctl", "hibernate")  # mode local; no shell
    tune_image_size: bool = False  # lower /sys/power/image_size by the clean leftovers
    # raise /sys/power/image_size to hold a small image whole when the kernel's own shrink inside
    # the window would take longer than writing what it shrinks (image_size=0 above all)
    raise_image_size: bool = True

    def validate(self) -> None:
        _check(self.mode in ("ec2", "local", "none"), "hibernate.mode", "must be ec2|local|none")
        _check(len(self.local_command) > 0, "hibernate.local_command", "must name a program")


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Opt-in fleet drills: the agent's decisions as events on an EventBridge bus."""

    event_bus: str = ""  # "": off; a bus name ("default") or ARN
    region: str = ""  # "": the instance's region
    # decisions waiting to be sent; beyond, dropped with a log line
    queue_size: int = ranged(100, 1, 10000)
    timeout: Seconds = ranged(Seconds(2.0), 0.01, 30, " s")  # per PutEvents try (two tries)

    def validate(self) -> None:
        bus = self.event_bus
        _check(
            len(bus) <= 1600 and not any(c.isspace() for c in bus),
            "fleet.event_bus",
            'must be empty (off), a bus name such as "default" or a bus ARN',
        )


@dataclass(frozen=True, slots=True)
class Config:
    imds: ImdsConfig = field(default_factory=ImdsConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)
    reclaim: ReclaimConfig = field(default_factory=ReclaimConfig)
    hibernate: HibernateConfig = field(default_factory=HibernateConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)

    def validate(self) -> Config:
        for section in dataclasses.fields(self):
            values = getattr(self, section.name)
            _check_ranges(section.name, values)
            if hasattr(values, "validate"):
                values.validate()
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            s.name: {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
            for s in dataclasses.fields(self)
            for section in [dataclasses.asdict(getattr(self, s.name))]
        }


def _names_host(url: str) -> bool:
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:  # e.g. "http://[::1": an IPv6 address left open
        return False


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def _check_ranges(section: str, values: Any) -> None:
    """Every numeric key has a range (`ranged`); ``lo <= x <= hi`` is also false for NaN."""
    for f in dataclasses.fields(values):
        if "range" in f.metadata:
            lo, hi, unit = f.metadata["range"]
            value = getattr(values, f.name)
            _check(lo <= value <= hi, f"{section}.{f.name}", _allowed(lo, hi, unit, value))


def _allowed(lo: float, hi: float, unit: str, value: object) -> str:
    return f"must be {_number_text(lo)}..{_number_text(hi)}{unit}, got {short(value)}"


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read `path` (a missing SPOTGUARD_CONFIG or default file: defaults), apply environment
    overrides, validate. Every problem is a ConfigError, whatever the file holds."""
    env = os.environ if env is None else env
    chosen = Path(path) if path is not None else Path(env.get("SPOTGUARD_CONFIG", DEFAULT_PATH))
    raw: dict[str, Any] = {}
    if path is not None or os.path.lexists(chosen):
        raw = _read_file(chosen)
    return from_mapping(raw, env)


def _read_file(path: Path) -> dict[str, Any]:
    where = f"config file {path}"
    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start}); TOML is UTF-8") from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a configuration") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    except ValueError:  # tomllib's int() of more digits than Python converts
        raise ConfigError(f"{where}: {_long_integer(text)}") from None


def _long_integer(text: str) -> str:
    """Name the key of the integer too long to read, as TOML's own error would not."""
    match = _LONG_DIGITS.search(text)
    if match is None:
        return "an integer too long to read"
    before = text[: match.start()]
    line = before.count("\n") + 1
    headers = _HEADER.findall(before)
    key = before[before.rfind("\n") + 1 :].partition("=")[0].strip()
    name = f"{headers[-1]}.{key}" if headers else key
    return f"line {line}: {name}: an integer of {len(match.group())} digits (far out of range)"


def from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]{_did_you_mean(name, sections)}")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
    values: dict[str, dict[str, Any]] = {name: dict(raw.get(name, {})) for name in sections}
    for (section, key), text in env_overrides(env or {}).items():
        values[section][key] = text
    built = {name: _build(name, _section_type(f), values[name]) for name, f in sections.items()}
    return Config(**built).validate()


def _section_type(f: dataclasses.Field[Any]) -> type[Any]:
    hints = typing.get_type_hints(Config)
    return typing.cast(type[Any], hints[f.name])


def env_names() -> dict[str, tuple[str, str]]:
    """Every variable that sets a key: ``SPOTGUARD_<SECTION>_<KEY>`` and the short forms."""
    names = {
        f"{ENV_PREFIX}{section.name}_{key.name}".upper(): (section.name, key.name)
        for section in dataclasses.fields(Config)
        for key in dataclasses.fields(_section_type(section))
    }
    return names | ENV_ALIASES


def env_overrides(env: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """(section, key) -> text. A ``SPOTGUARD_*`` name that is no key is an error naming the
    closest one: a typo (``SPOTGUARD_HIBERNATION_MODE``) must not leave the default in force."""
    known = env_names()
    found: dict[tuple[str, str], str] = {}
    for name, text in env.items():
        if name in known:
            found[known[name]] = text
        elif name.startswith(ENV_PREFIX) and name not in NOT_CONFIG:
            closest = difflib.get_close_matches(name, known, n=1, cutoff=0.0)
            hint = f"; did you mean {closest[0]} ({'.'.join(known[closest[0]])})?"
            raise ConfigError(f"unknown variable {name}{hint if closest else ''}")
    return found


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    ordered = sorted(choices)
    closest = difflib.get_close_matches(name, ordered, n=1)
    known = f" (known: {', '.join(ordered)})"
    return f"; did you mean {closest[0]}?{known}" if closest else known


def _build(section: str, cls: type[Any], values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown key {section}.{key}{_did_you_mean(key, known)}")
    kwargs = {}
    for key, value in values.items():
        try:
            kwargs[key] = _coerce(hints[key], value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{section}.{key}: {exc}") from None
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    """Turn a TOML value or an environment string into the field's type, or say what is allowed.

    Numbers are finite and short (no NaN, no 5,000 digits) before any range check sees them.
    """
    if hint is Bytes:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"expected a size (4096, 256M, 2G), got {short(value)}")
        return parse_bytes(value)
    if hint is Seconds:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"expected a duration (30s, 500ms, 2m), got {short(value)}")
        return parse_duration(value)
    if hint is bool:
        return _boolean(value)
    if hint is int or hint is float:
        return _number(value, integer=hint is int)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {short(value)}")
        return _text(value)
    origin = typing.get_origin(hint)
    if origin is tuple:
        items = (
            [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
        )
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise TypeError(f"expected a list of strings, got {short(value)}")
        return tuple(_text(i) for i in items)
    raise TypeError(f"unsupported type {hint}")


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = value.strip().lower() if isinstance(value, str) else value
    if word in _TRUE or word == 1:
        return True
    if word in _FALSE or word == 0:
        return False
    raise ValueError(f"expected one of {'/'.join(_TRUE + _FALSE)}, got {short(value)}")


def _number(value: Any, *, integer: bool) -> int | float:
    kind = "an integer" if integer else "a number"
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) > 40:
                raise ValueError(text)
            value = int(text) if integer else float(text)
        except ValueError:
            raise ValueError(f"expected {kind}, got {short(value)}") from None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and isinstance(value, float))
    ):
        raise TypeError(f"expected {kind}, got {short(value)}")
    if integer:
        return value
    if isinstance(value, int) and value.bit_length() > 64:  # float() of it overflows
        raise ValueError(f"expected a number of sensible size, got {short(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {short(value)}")
    return number


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError(f"must not contain a NUL character: {short(value)}")
    return value
