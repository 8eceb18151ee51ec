"""Configuration: a TOML file, then ``SPOTGUARD_<SECTION>_<KEY>`` overrides, validated up front.

Every section is a frozen dataclass; the loader derives keys and types from the fields, so a
new setting is one line here. An unknown key or a bad value raises ConfigError naming it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotguard.units import parse_bytes, parse_duration

DEFAULT_PATH = Path("/etc/spotguard/config.toml")
ENV_PREFIX = "SPOTGUARD_"
# Short names people already know from the design card.
ENV_ALIASES = {"SPOTGUARD_IMDS_URL": ("imds", "url"), "SPOTGUARD_ROOT": ("agent", "root")}

Bytes = typing.NewType("Bytes", int)
Seconds = typing.NewType("Seconds", float)


class ConfigError(ValueError):
    """A bad configuration; the message names the key."""


@dataclass(frozen=True, slots=True)
class ImdsConfig:
    url: str = "http://169.254.169.254"
    allow_v1: bool = False
    token_ttl: Seconds = Seconds(21600.0)
    connect_timeout: Seconds = Seconds(1.0)
    read_timeout: Seconds = Seconds(2.0)
    attempts: int = 3

    def validate(self) -> None:
        _check(self.url.startswith(("http://", "https://")), "imds.url", "must be an http URL")
        _check(1 <= self.token_ttl <= 21600, "imds.token_ttl", "must be 1..21600 seconds")
        _check(self.connect_timeout > 0, "imds.connect_timeout", "must be > 0")
        _check(self.read_timeout > 0, "imds.read_timeout", "must be > 0")
        _check(1 <= self.attempts <= 10, "imds.attempts", "must be 1..10")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    root: str = "/"
    poll_interval: Seconds = Seconds(1.0)  # the spot notice: every poll
    slow_poll_interval: Seconds = Seconds(5.0)  # rebalance, scheduled events, ASG: minutes ahead
    state_file: str = "/var/lib/spotguard/state.json"
    hook_dir: str = "/etc/spotguard/hooks"
    hook_timeout: Seconds = Seconds(10.0)
    webhook_url: str = ""
    webhook_attempts: int = 3
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    unhealthy_after: int = 5
    resume_jump: Seconds = Seconds(10.0)

    def validate(self) -> None:
        _check(self.root.startswith("/"), "agent.root", "must be an absolute path")
        _check(0.05 <= self.poll_interval <= 60, "agent.poll_interval", "must be 0.05..60 s")
        _check(
            self.slow_poll_interval >= self.poll_interval,
            "agent.slow_poll_interval",
            "must be >= agent.poll_interval",
        )
        _check(self.hook_timeout > 0, "agent.hook_timeout", "must be > 0")
        _check(
            self.webhook_url == "" or self.webhook_url.startswith(("http://", "https://")),
            "agent.webhook_url",
            "must be empty or an http URL",
        )
        _check(1 <= self.webhook_attempts <= 10, "agent.webhook_attempts", "must be 1..10")
        _check(0 <= self.metrics_port <= 65535, "agent.metrics_port", "must be 0 (off)..65535")
        _check(self.unhealthy_after >= 1, "agent.unhealthy_after", "must be >= 1")
        _check(self.resume_jump > 0, "agent.resume_jump", "must be > 0")


@dataclass(frozen=True, slots=True)
class IdleConfig:
    """When the host counts as idle (the RFC's daemon: least idle CPU >= 95 % for 30 s)."""

    cpu_idle_percent: float = 95.0
    duration: Seconds = Seconds(30.0)
    max_load: float = 0.0  # 0: ignore the load average
    max_psi_memory: float = 1.0  # % "some" avg10
    max_psi_io: float = 5.0
    max_io_bytes_per_s: Bytes = Bytes(20 << 20)
    # The workload cgroups' own CPU (% of one CPU, summed; cgroup v2): below it the workload is
    # quiet even where the least idle CPU is not (emulation, the agent itself).
    max_workload_cpu_percent: float = 10.0

    def validate(self) -> None:
        _check(0 < self.cpu_idle_percent <= 100, "idle.cpu_idle_percent", "must be 0..100")
        _check(self.max_workload_cpu_percent >= 0, "idle.max_workload_cpu_percent", "must be >= 0")
        _check(self.duration >= 0, "idle.duration", "must be >= 0")
        _check(self.max_load >= 0, "idle.max_load", "must be >= 0")
        _check(0 <= self.max_psi_memory <= 100, "idle.max_psi_memory", "must be 0..100")
        _check(0 <= self.max_psi_io <= 100, "idle.max_psi_io", "must be 0..100")


@dataclass(frozen=True, slots=True)
class ReclaimConfig:
    backend: str = "auto"  # auto | v2 | swap.reclaim | v1 | drop_caches
    cgroup_root: str = "/sys/fs/cgroup"
    background: tuple[str, ...] = ("system.slice", "batch.slice")
    protected: tuple[str, ...] = ()
    step: Bytes = Bytes(128 << 20)
    step_percent: float = 2.0
    idle_psi: float = 0.1  # % memory/io "some" avg10 that ends an idle-time stage
    emergency_psi: float = 20.0
    light_budget: Seconds = Seconds(60.0)
    deep_budget: Seconds = Seconds(300.0)
    write_timeout: Seconds = Seconds(5.0)
    allow_drop_caches: bool = False
    repeat_after: Seconds = Seconds(600.0)
    # Idle reclaim swaps the background cgroups' anonymous memory too, after their page cache:
    # what is swapped before a notice is not shrunk inside the 2-minute window (issue 11).
    # false: page cache only, a faster wake-up for the background cgroups.
    idle_swap: bool = True

    def validate(self) -> None:
        backends = ("auto", "v2", "swap.reclaim", "v1", "drop_caches")
        _check(self.backend in backends, "reclaim.backend", f"must be one of {backends}")
        _check(self.cgroup_root.startswith("/"), "reclaim.cgroup_root", "must be absolute")
        for name in (*self.background, *self.protected):
            _check(".." not in Path(name).parts, "reclaim.background", f"bad cgroup {name!r}")
        _check(self.step > 0, "reclaim.step", "must be > 0")
        _check(0 < self.step_percent <= 100, "reclaim.step_percent", "must be 0..100")
        _check(self.idle_psi >= 0, "reclaim.idle_psi", "must be >= 0")
        _check(self.emergency_psi >= self.idle_psi, "reclaim.emergency_psi", "must be >= idle_psi")
        _check(self.write_timeout > 0, "reclaim.write_timeout", "must be > 0")


@dataclass(frozen=True, slots=True)
class HibernateConfig:
    mode: str = "ec2"  # ec2 | local | none
    swap_margin: float = 1.1
    deadline_margin: Seconds = Seconds(20.0)
    fixed_overhead: Seconds = Seconds(10.0)  # freeze, API call, device suspend
    swap_bandwidth: Bytes = Bytes(100 << 20)  # bytes/s the image is written at
    # bytes/s the kernel preallocates image page frames at, until a hibernation here measures
    # it (its "Allocated" line): fast on real CPUs, ~74 MB/s under QEMU TCG (issue 11).
    prealloc_bandwidth: Bytes = Bytes(1 << 30)
    small_image: Bytes = Bytes(0)  # 0: "small" means within 1.2x the kernel's floor
    pre_hibernate_budget: Seconds = Seconds(5.0)
    region: str = ""  # "" : from the metadata service
    local_command: tuple[str, ...] = ("systemctl", "hibernate")  # mode local; no shell
    tune_image_size: bool = False  # lower /sys/power/image_size by the clean leftovers

    def validate(self) -> None:
        _check(self.mode in ("ec2", "local", "none"), "hibernate.mode", "must be ec2|local|none")
        _check(self.swap_margin >= 1.0, "hibernate.swap_margin", "must be >= 1.0")
        _check(self.deadline_margin >= 0, "hibernate.deadline_margin", "must be >= 0")
        _check(self.swap_bandwidth > 0, "hibernate.swap_bandwidth", "must be > 0")
        _check(self.prealloc_bandwidth > 0, "hibernate.prealloc_bandwidth", "must be > 0")
        _check(len(self.local_command) > 0, "hibernate.local_command", "must name a program")


@dataclass(frozen=True, slots=True)
class Config:
    imds: ImdsConfig = field(default_factory=ImdsConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)
    reclaim: ReclaimConfig = field(default_factory=ReclaimConfig)
    hibernate: HibernateConfig = field(default_factory=HibernateConfig)

    def validate(self) -> Config:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            s.name: {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
            for s in dataclasses.fields(self)
            for section in [dataclasses.asdict(getattr(self, s.name))]
        }


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read `path` (missing default file: defaults), apply environment overrides, validate."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    chosen = Path(path) if path is not None else Path(env.get("SPOTGUARD_CONFIG", DEFAULT_PATH))
    if path is not None or chosen.exists():
        try:
            raw = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {chosen} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {chosen}: {exc}") from None
    return from_mapping(raw, env)


def from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join(sections)})")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
    values: dict[str, dict[str, Any]] = {name: dict(raw.get(name, {})) for name in sections}
    for (section, key), text in _env_overrides(env or {}, sections).items():
        values[section][key] = text
    built = {name: _build(name, _section_type(f), values[name]) for name, f in sections.items()}
    return Config(**built).validate()


def _section_type(f: dataclasses.Field[Any]) -> type[Any]:
    hints = typing.get_type_hints(Config)
    return typing.cast(type[Any], hints[f.name])


def _env_overrides(
    env: Mapping[str, str], sections: Mapping[str, dataclasses.Field[Any]]
) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for name, text in env.items():
        if name in ENV_ALIASES:
            found[ENV_ALIASES[name]] = text
            continue
        if not name.startswith(ENV_PREFIX) or name == "SPOTGUARD_CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                found[(section, rest[len(section) + 1 :])] = text
                break
    return found


def _build(section: str, cls: type[Any], values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown key {section}.{key} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in values.items():
        try:
            kwargs[key] = _coerce(hints[key], value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{section}.{key}: {exc}") from None
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    if hint is Bytes:
        return parse_bytes(value if isinstance(value, int | str) else str(value))
    if hint is Seconds:
        return parse_duration(value if isinstance(value, int | float | str) else str(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    origin = typing.get_origin(hint)
    if origin is tuple:
        items = (
            [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
        )
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return tuple(items)
    raise TypeError(f"unsupported type {hint}")
