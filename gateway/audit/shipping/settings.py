"""``decision_log.sinks``: where the decision log is shipped, parsed and checked."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.audit.shipping.formats import FORMATS
from gateway.config import ConfigError, _Reader

KINDS = ("syslog", "http", "file")
ENVELOPES = ("opa", "splunk_hec")
# RFC 5424 facility names -> codes (the security-relevant ones and local0-7).
FACILITIES = {
    "kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
    "audit": 13, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# A url's userinfo (RFC 3986 3.2.1: ``user:password@`` before the host) is a
# credential. Up to the last "@" before a query or the end of the url's text: a
# password holding an unencoded "/" still counts, so an error line never shows it.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^ \t\r\n\f\v?#\"'<>]*@")
DEFAULT_BACKLOG_ALERT_BYTES = 1 << 30


@dataclass(frozen=True)
class SinkTls:
    ca_file: Path | None = None  # None: the system's CAs
    cert_file: Path | None = None  # a client certificate, when the receiver asks for one
    key_file: Path | None = None
    server_name: str | None = None  # default: the address's host


@dataclass(frozen=True)
class SinkConfig:
    name: str
    kind: str  # syslog | http | file
    format: str = "opa"  # opa | ocsf | ecs
    # syslog
    address: str = ""  # host:port
    tls: SinkTls | None = None  # syslog: None is plain TCP; http: the url's scheme decides
    facility: int = FACILITIES["authpriv"]
    app_name: str = "portcullis"
    # http
    url: str = ""
    envelope: str = "opa"  # opa | splunk_hec
    token_file: Path | None = None
    gzip: bool = True
    hec_sourcetype: str = "portcullis:decision"
    hec_index: str | None = None
    # file
    path: Path | None = None
    # every kind
    timeout: float = 10.0
    batch_max_events: int = 500
    retry_initial: float = 0.5
    retry_max: float = 30.0
    backlog_alert_bytes: int = DEFAULT_BACKLOG_ALERT_BYTES

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)


def sink_to_json(config: SinkConfig) -> dict[str, Any]:
    """The sink's settings as plain JSON (to hand them to the shipping process)."""
    return dataclasses.asdict(
        config, dict_factory=lambda pairs: {k: str(v) if isinstance(v, Path) else v
                                            for k, v in pairs},
    )  # fmt: skip


def sink_from_json(data: dict[str, Any]) -> SinkConfig:
    """The inverse of :func:`sink_to_json`."""
    paths = {"token_file", "path"}
    values: dict[str, Any] = {
        k: Path(v) if k in paths and v is not None else v for k, v in data.items()
    }
    tls = values.get("tls")
    if tls is not None:
        files: dict[str, Any] = {
            k: Path(v) if k.endswith("_file") and v is not None else v for k, v in tls.items()
        }
        values["tls"] = SinkTls(**files)
    return SinkConfig(**values)


def parse_sinks(
    items: list[Any], base_dir: Path, log_path: Path | None = None
) -> tuple[SinkConfig, ...]:
    sinks = tuple(_sink(item, f"decision_log.sinks[{i}]", base_dir) for i, item in
                  enumerate(items))  # fmt: skip
    seen: dict[str, int] = {}
    for index, sink in enumerate(sinks):
        if sink.name in seen:
            raise ConfigError(
                f"decision_log.sinks[{index}].name: {sink.name!r} is also "
                f"sinks[{seen[sink.name]}]'s name; each sink needs its own (it names "
                "the sink's cursor file and metrics)"
            )
        seen[sink.name] = index
    _check_file_paths(sinks, log_path)
    return sinks


def _check_file_paths(sinks: tuple[SinkConfig, ...], log_path: Path | None) -> None:
    """A file sink writing into the decision log (or its .head, a cursor, a rotated
    copy: any file beside it whose name starts with the log's) would ship its own
    output again, growing the log without end and breaking its chain; two file
    sinks on one file would interleave. Compared after resolving symbolic links."""
    log = _resolved(log_path) if log_path is not None else None
    taken: dict[Path, int] = {}
    for index, sink in enumerate(sinks):
        if sink.path is None:
            continue
        where = f"decision_log.sinks[{index}].path"
        path = _resolved(sink.path)
        if log is not None and (
            path == log
            or (path.parent == log.parent and path.name.startswith(log.name))
            or _same_file(path, log)
        ):
            raise ConfigError(
                f"{where}: {sink.path} is the decision log {log_path} or one of its own files "
                "(.head, cursors, rotated copies): the sink would ship its own output again. "
                "Give it a file of its own"
            )
        if path in taken:
            raise ConfigError(
                f"{where}: {sink.path} is also decision_log.sinks[{taken[path]}].path; "
                "each file sink needs a file of its own"
            )
        taken[path] = index


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same_file(a: Path, b: Path) -> bool:
    """The same file under two names (a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them doesn't exist yet
        return False


def _sink(data: Any, where: str, base_dir: Path) -> SinkConfig:
    reader = _Reader(data, where)
    kind = reader.required("kind", str)
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    name = reader.get("name", str, kind)
    if not _NAME.match(name):
        raise ConfigError(
            f"{where}.name: {name!r}: lower-case letters, digits, '_' and '-' (up to 63)"
        )
    form = reader.get("format", str, "opa")
    if form not in FORMATS:
        raise ConfigError(f"{where}.format: must be one of {', '.join(FORMATS)}, got {form!r}")
    common: dict[str, Any] = {
        "timeout": _positive(reader, "timeout", 10.0),
        "batch_max_events": int(_positive(reader, "batch_max_events", 500, int)),
        "retry_initial": _positive(reader, "retry_initial", 0.5),
        "retry_max": _positive(reader, "retry_max", 30.0),
        "backlog_alert_bytes": int(
            _positive(reader, "backlog_alert_bytes", DEFAULT_BACKLOG_ALERT_BYTES, int)
        ),
    }
    if common["retry_max"] < common["retry_initial"]:
        raise ConfigError(f"{where}.retry_max: must be at least retry_initial")
    if kind == "syslog":
        config = _syslog(reader, where, base_dir, name, form, common)
    elif kind == "http":
        config = _http(reader, where, base_dir, name, form, common)
    else:
        config = SinkConfig(name, kind, form, path=_output_file(reader, where, base_dir), **common)
    reader.done()
    return config


def _syslog(
    reader: _Reader, where: str, base_dir: Path, name: str, form: str, common: dict[str, Any]
) -> SinkConfig:
    address = reader.required("address", str)
    host, _, port = address.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}.address: expected host:port, got {address!r}")
    facility_name = reader.get("facility", str, "authpriv")
    if facility_name not in FACILITIES:
        raise ConfigError(
            f"{where}.facility: one of {', '.join(FACILITIES)}, got {facility_name!r}"
        )
    app_name = reader.get("app_name", str, "portcullis")
    if not 0 < len(app_name) <= 48 or not all(33 <= ord(c) <= 126 for c in app_name):
        raise ConfigError(f"{where}.app_name: 1-48 printable ASCII characters, no spaces")
    tls_data = reader.get("tls", (dict, bool), None)
    tls = None
    if tls_data is True:
        tls = SinkTls()
    elif isinstance(tls_data, dict):
        tls = _tls(tls_data, f"{where}.tls", base_dir)
    return SinkConfig(
        name, "syslog", form, address=address, tls=tls, facility=FACILITIES[facility_name],
        app_name=app_name, **common,
    )  # fmt: skip


def without_userinfo(text: str) -> str:
    """``text`` (a url, or a message holding urls) as a log line may show it: each
    url's userinfo replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text)


def _http(
    reader: _Reader, where: str, base_dir: Path, name: str, form: str, common: dict[str, Any]
) -> SinkConfig:
    url = reader.required("url", str)
    shown = without_userinfo(url)
    if shown != url:
        raise ConfigError(
            f"{where}.url: holds credentials (user:password@ before the host): {shown!r}; "
            "put the token in a file and give token_file (a secret doesn't belong in the "
            "config); an '@' of the path is written %40"
        )
    try:
        parts = urlsplit(url)
        _ = parts.port  # a ValueError when out of range or not a number
    except ValueError as error:
        raise ConfigError(f"{where}.url: not a valid URL ({error}): {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}.url: must be an http(s) URL, got {url!r}")
    if parts.port == 0:
        raise ConfigError(f"{where}.url: port 0 is not a port: {url!r}")
    envelope = reader.get("envelope", str, "opa")
    if envelope not in ENVELOPES:
        raise ConfigError(
            f"{where}.envelope: must be one of {', '.join(ENVELOPES)}, got {envelope!r}"
        )
    if "token" in reader.data:
        raise ConfigError(
            f"{where}.token: put the token in a file and give token_file (a secret "
            "doesn't belong in the config)"
        )
    token_file = _file_path(base_dir, reader.get("token_file", str, None), f"{where}.token_file")
    if token_file is not None and not token_file.is_file():
        raise ConfigError(f"{where}.token_file: no such file {token_file}")
    if token_file is not None:
        try:
            read_token(token_file)
        except (OSError, ValueError) as error:
            raise ConfigError(f"{where}.token_file: {error}") from None
    if envelope == "splunk_hec" and token_file is None:
        raise ConfigError(f"{where}.token_file: Splunk HEC needs a token (its file)")
    gzip = reader.get("gzip", bool, True)
    sourcetype = reader.get("sourcetype", str, "portcullis:decision")
    index = reader.get("index", str, None)
    for hec_only in ("sourcetype", "index"):
        if envelope != "splunk_hec" and reader.data.get(hec_only) is not None:
            raise ConfigError(
                f"{where}.{hec_only}: only for envelope: splunk_hec (this sink sends OPA's "
                "decision-log envelope, which has no such field)"
            )
    # An https url is TLS with the system CAs; `tls` narrows it to a private CA,
    # adds a client certificate or names the server (a url with an IP address).
    tls_data = reader.get("tls", dict, None)
    tls = None
    if tls_data is not None:
        if parts.scheme != "https":
            raise ConfigError(f"{where}.tls: needs an https:// url, got {url!r}")
        tls = _tls(tls_data, f"{where}.tls", base_dir)
    return SinkConfig(
        name, "http", form, tls=tls, url=url, envelope=envelope, token_file=token_file,
        gzip=gzip, hec_sourcetype=sourcetype, hec_index=index, **common,
    )  # fmt: skip


def _tls(data: dict[str, Any], where: str, base_dir: Path) -> SinkTls:
    """A sink's ``tls`` mapping (syslog and http alike), its files loaded now: a
    file that isn't what it should be is a config error, not a failing shipper."""
    reader = _Reader(data, where)
    files = {}
    for key in ("ca_file", "cert_file", "key_file"):
        files[key] = _file_path(base_dir, reader.get(key, str, None), f"{where}.{key}")
    server_name = reader.get("server_name", str, None)
    reader.done()
    if (files["cert_file"] is None) != (files["key_file"] is None):
        raise ConfigError(f"{where}: cert_file and key_file go together")
    tls = SinkTls(files["ca_file"], files["cert_file"], files["key_file"], server_name)
    try:
        tls_context(tls)
    except TlsFileError as error:
        raise ConfigError(f"{where}.{error.key}: {error}") from None
    return tls


def read_token(path: Path) -> str:
    """The bearer token in ``path``: one token on one line (it becomes a header).
    Raises OSError or ValueError saying what is wrong. Read at the start and again
    for every batch, so a rotated Secret is picked up."""
    try:
        token = path.read_text().strip()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: {error}") from None
    if not token:
        # No header at all: every batch a 401, retried for ever, the cause unsaid.
        raise ValueError(f"{path}: empty: the file must hold the sink's token")
    if any(ord(c) < 32 or ord(c) == 127 for c in token):
        raise ValueError(
            f"{path}: the token holds a line break or another control character: "
            "one token, one line"
        )
    return token


class TlsFileError(ValueError):
    """A CA or client certificate file that doesn't load; ``key`` names its setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def tls_context(tls: SinkTls) -> ssl.SSLContext:
    """The client TLS context of a syslog or https sink (TLS 1.2 or later), its CA and client
    certificate loaded. Raises TlsFileError naming the file that doesn't load."""
    try:
        context = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls.ca_file is not None else None
        )
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        reason = getattr(error, "reason", None) or error
        raise TlsFileError(
            "ca_file", f"{tls.ca_file} is not a PEM CA certificate ({reason})"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise TlsFileError(
                "cert_file",
                f"{tls.cert_file} / {tls.key_file} is not a PEM certificate and key ({reason})",
            ) from None
    return context


def _positive(reader: _Reader, name: str, default: float, kind: type = float) -> float:
    value = reader.get(name, kind, default)
    if not 0 < value < math.inf:  # NaN fails this too
        raise ConfigError(f"{reader.key(name)}: must be a number greater than 0, got {value}")
    return float(value) if kind is float else value


def _output_file(reader: _Reader, where: str, base_dir: Path) -> Path:
    """A file sink's file: a file name (it is created), not a directory, and not
    empty (that would be the config's directory): else it would fail on every
    write, forever, after a start that looked fine."""
    value: str = reader.required("path", str)
    path = base_dir / value  # an absolute value replaces base_dir
    if not value.strip() or value.endswith("/") or path.is_dir():
        raise ConfigError(f"{where}.path: {value!r} is a directory; give the file to write")
    # Its directory is created when missing: every part that exists must be one.
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"{where}.path: {value!r} can't be created: {parent} is a file, not a directory"
                )
            break
    return path


def _file_path(base: Path, value: str | None, where: str = "") -> Path | None:
    if value is None:
        return None
    path = Path(value)
    path = path if path.is_absolute() else base / path
    if where and where.endswith(("ca_file", "cert_file", "key_file")) and not path.is_file():
        raise ConfigError(f"{where}: no such file {path}")
    return path
