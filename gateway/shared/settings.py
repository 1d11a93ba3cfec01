"""The `shared_state` section of the gateway config: where Redis is, and what it holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config import ConfigError, _Reader


@dataclass(frozen=True)
class RedisTls:
    """Client TLS for `rediss://`: the CA that signed Redis' certificate (default: the
    system's) and, when Redis asks for one (`tls-auth-clients`), a client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class RedisConfig:
    url: str
    password: str | None = field(default=None, repr=False)
    tls: RedisTls | None = None
    max_connections: int = 256


@dataclass(frozen=True)
class Timeouts:
    request: float = 0.1  # the most one request waits for Redis
    connect: float = 0.5  # a (re)connection attempt
    retry_interval: float = 1.0  # after a failure: probe this often; requests don't wait


@dataclass(frozen=True)
class RateLimit:
    requests: int  # 0: no limit
    window: int  # seconds

    @property
    def enabled(self) -> bool:
        return self.requests > 0


@dataclass(frozen=True)
class RateLimits:
    # Unauthenticated requests and invalid tokens, per source address.
    source_ip: RateLimit = RateLimit(300, 60)
    # Authenticated requests per identity per app; `apps` overrides it per app.
    identity: RateLimit = RateLimit(1200, 60)
    apps: dict[str, RateLimit] = field(default_factory=dict)

    def for_app(self, app: str) -> RateLimit:
        return self.apps.get(app, self.identity)


@dataclass(frozen=True)
class Lockout:
    after_denies: int = 0  # 0: off
    window: int = 900
    duration: int = 1800

    @property
    def enabled(self) -> bool:
        return self.after_denies > 0


@dataclass(frozen=True)
class Signals:
    new_source_ip_days: int = 30
    recent_denies_window: int = 900
    active_session_window: int = 900


@dataclass(frozen=True)
class SharedStateConfig:
    redis: RedisConfig
    on_unavailable: str = "deny"  # "deny" | "allow"
    timeouts: Timeouts = Timeouts()
    key_prefix: str = "portcullis:"
    rate_limits: RateLimits = field(default_factory=RateLimits)
    lockout: Lockout = Lockout()
    signals: Signals = Signals()


def parse_shared_state(data: Any, base_dir: Path) -> SharedStateConfig:
    reader = _Reader(data, "shared_state")
    redis = _redis(reader.get("redis", dict, None), base_dir)
    mode = reader.get("on_unavailable", str, "deny")
    if mode not in ("deny", "allow"):
        raise ConfigError(f"shared_state.on_unavailable: must be 'deny' or 'allow', got {mode!r}")
    timeouts = _timeouts(reader.get("timeouts", dict, {}))
    prefix = reader.get("key_prefix", str, "portcullis:")
    if not prefix or len(prefix) > 64 or not prefix.isprintable() or " " in prefix:
        raise ConfigError("shared_state.key_prefix: 1-64 printable characters, no spaces")
    rate_limits = _rate_limits(reader.get("rate_limits", dict, {}))
    lockout = _lockout(reader.get("lockout", dict, {}))
    signals = _signals(reader.get("signals", dict, {}))
    reader.done()
    return SharedStateConfig(redis, mode, timeouts, prefix, rate_limits, lockout, signals)


def _redis(data: dict[str, Any] | None, base_dir: Path) -> RedisConfig:
    if data is None:
        raise ConfigError("shared_state.redis: required (url: redis://host:6379/0)")
    reader = _Reader(data, "shared_state.redis")
    url = reader.required("url", str)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ConfigError(
            f"shared_state.redis.url: must be redis://host:port/db, rediss:// (TLS) or "
            f"unix:///path, got {url.split('@')[-1]!r}"
        )
    password = None
    password_file = reader.get("password_file", str, None)
    if password_file is not None:
        path = (
            Path(password_file) if Path(password_file).is_absolute() else base_dir / password_file
        )
        try:
            password = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(
                f"shared_state.redis.password_file: can't read {path}: {error.strerror}"
            ) from None
        if parts.password:
            raise ConfigError(
                "shared_state.redis.password_file: the url carries a password too; keep it "
                "in the file only"
            )
    tls = _tls(reader, base_dir, parts.scheme)
    max_connections = reader.get("max_connections", int, 256)
    if not 1 <= max_connections <= 100_000:
        raise ConfigError("shared_state.redis.max_connections: must be 1-100000")
    reader.done()
    return RedisConfig(url, password, tls, max_connections)


def _tls(reader: _Reader, base_dir: Path, scheme: str) -> RedisTls | None:
    """rediss:// always speaks TLS (the system's CAs unless `tls.ca_file` says otherwise)."""
    data = reader.get("tls", dict, None)
    if data is None:
        return RedisTls() if scheme == "rediss" else None
    if scheme != "rediss":
        raise ConfigError("shared_state.redis.tls: needs a rediss:// url (TLS)")
    tls = _Reader(data, "shared_state.redis.tls")
    files: dict[str, Path | None] = {}
    for name in ("ca_file", "cert_file", "key_file"):
        value = tls.get(name, str, None)
        path = None if value is None else Path(value)
        if path is not None and not path.is_absolute():
            path = base_dir / path
        if path is not None and not path.is_file():
            raise ConfigError(f"shared_state.redis.tls.{name}: no such file {path}")
        files[name] = path
    tls.done()
    if (files["cert_file"] is None) != (files["key_file"] is None):
        raise ConfigError("shared_state.redis.tls: cert_file and key_file go together")
    return RedisTls(**files)


def _timeouts(data: dict[str, Any]) -> Timeouts:
    reader = _Reader(data, "shared_state.timeouts")
    default = Timeouts()
    values = {}
    for name, value in vars(default).items():
        values[name] = reader.get(name, float, value)
        if not 0 < values[name] <= 30:
            raise ConfigError(f"shared_state.timeouts.{name}: must be over 0 and at most 30 s")
    reader.done()
    return Timeouts(**values)


def _rate_limit(data: Any, where: str, default: RateLimit) -> RateLimit:
    if data is None:
        return default
    reader = _Reader(data, where)
    requests = reader.get("requests", int, default.requests)
    window = reader.get("window", int, default.window)
    reader.done()
    if requests < 0:
        raise ConfigError(f"{where}.requests: must be 0 (no limit) or more")
    if not 1 <= window <= 86400:
        raise ConfigError(f"{where}.window: must be 1-86400 seconds")
    return RateLimit(requests, window)


def _rate_limits(data: dict[str, Any]) -> RateLimits:
    reader = _Reader(data, "shared_state.rate_limits")
    default = RateLimits()
    source_ip = _rate_limit(
        reader.get("source_ip", dict, None), "shared_state.rate_limits.source_ip", default.source_ip
    )
    identity = _rate_limit(
        reader.get("identity", dict, None), "shared_state.rate_limits.identity", default.identity
    )
    apps = {}
    for app, value in (reader.get("apps", dict, {}) or {}).items():
        where = f"shared_state.rate_limits.apps.{app}"
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping {{requests, window}}")
        apps[str(app)] = _rate_limit(value, where, identity)
    reader.done()
    return RateLimits(source_ip, identity, apps)


def _lockout(data: dict[str, Any]) -> Lockout:
    reader = _Reader(data, "shared_state.lockout")
    default = Lockout()
    after = reader.get("after_denies", int, default.after_denies)
    window = reader.get("window", int, default.window)
    duration = reader.get("duration", int, default.duration)
    reader.done()
    if after < 0:
        raise ConfigError("shared_state.lockout.after_denies: must be 0 (off) or more")
    for name, value in (("window", window), ("duration", duration)):
        if not 1 <= value <= 30 * 86400:
            raise ConfigError(f"shared_state.lockout.{name}: must be 1 s to 30 days (in seconds)")
    return Lockout(after, window, duration)


def _signals(data: dict[str, Any]) -> Signals:
    reader = _Reader(data, "shared_state.signals")
    default = Signals()
    days = reader.get("new_source_ip_days", int, default.new_source_ip_days)
    if not 1 <= days <= 400:
        raise ConfigError("shared_state.signals.new_source_ip_days: must be 1-400")
    values = {}
    for name in ("recent_denies_window", "active_session_window"):
        values[name] = reader.get(name, int, getattr(default, name))
        if not 1 <= values[name] <= 86400:
            raise ConfigError(f"shared_state.signals.{name}: must be 1-86400 seconds")
    reader.done()
    return Signals(days, **values)
