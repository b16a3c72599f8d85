"""One place that reads a Triton endpoint the user typed: `host:port`, `http://host:port`, `[::1]:8001`, `host`.

Everything that takes `--url` parses it here, at settings time, so garbage is one clear line before any work starts
and the rest of the code holds a validated `Endpoint` (tritonclient wants `host:port`, without a scheme).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tritonctl.core.errors import BadInput

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_SCHEMES = ("http://", "grpc://")


@dataclass(frozen=True)
class Endpoint:
    host: str  # without brackets, e.g. ::1
    port: int

    @property
    def url(self) -> str:
        """`host:port` as tritonclient and perf_analyzer take it (IPv6 in brackets)."""
        return f"{self.netloc_host}:{self.port}"

    @property
    def netloc_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def http(self) -> str:
        return f"http://{self.url}"

    @property
    def local(self) -> bool:
        """On this host: system shared memory between client and server can work."""
        return self.host.lower() in LOCAL_HOSTS or self.host.startswith("127.")

    def with_port(self, port: int) -> Endpoint:
        return Endpoint(self.host, port)

    def __str__(self) -> str:
        return self.url


def parse_endpoint(text: str, default_port: int = 8000, flag: str = "--url") -> Endpoint:
    """`host[:port]`, optionally with a scheme (http://, grpc://) and a trailing slash; IPv6 in brackets."""
    raw = text.strip()
    rest = raw
    if rest.lower().startswith("https://"):
        raise BadInput(f"{flag} {text!r}: TLS endpoints are not supported yet; give the plain host:port of Triton "
                       "(or of a TLS-terminating proxy's plain side)")
    for scheme in _SCHEMES:
        if rest.lower().startswith(scheme):
            rest = rest[len(scheme):]
            break
    rest = rest.rstrip("/")
    if not rest or "/" in rest or "?" in rest or "@" in rest or " " in rest:
        raise BadInput(f"{flag} {text!r} is not an endpoint: give host:port, e.g. 127.0.0.1:8000 or [::1]:8001")
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise BadInput(f"{flag} {text!r}: an IPv6 address goes in brackets, e.g. [::1]:8000")
        port_text = tail[1:] if tail else ""
        _check_ipv6(host, text, flag)
    elif rest.count(":") > 1:
        raise BadInput(f"{flag} {text!r}: put an IPv6 address in brackets, e.g. [::1]:8000")
    else:
        host, _, port_text = rest.partition(":")
        if not _valid_host(host):
            raise BadInput(f"{flag} {text!r}: {host!r} is not a host name or IP address")
    if rest.endswith(":") or (port_text == "" and ":" in rest.split("]")[-1]):
        raise BadInput(f"{flag} {text!r}: the port is missing after ':'")
    port = default_port
    if port_text:
        if not port_text.isdigit():
            raise BadInput(f"{flag} {text!r}: port {port_text!r} is not a number (e.g. {host}:8000)")
        port = int(port_text)
    if not 0 < port < 65536:
        raise BadInput(f"{flag} {text!r}: port {port} is outside 1..65535")
    return Endpoint(host, port)


def _check_ipv6(host: str, text: str, flag: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise BadInput(f"{flag} {text!r}: {host!r} is not an IPv6 address") from None


def _valid_host(host: str) -> bool:
    if not host:
        return False
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    if host.replace(".", "").isdigit():  # looks like an IPv4 address but is not one (e.g. 300.1.1.1)
        return False
    return bool(_HOSTNAME.match(host))


DEFAULT_PORTS = {"http": 8000, "grpc": 8001}  # Triton's own defaults


def parse_endpoints(urls: list[str], protocol: str, flag: str = "--url") -> list[Endpoint]:
    """Every --url given (default: this host), without repeats, the port defaulting to the protocol's."""
    if protocol not in DEFAULT_PORTS:
        raise BadInput(f"--protocol {protocol!r}: choose http or grpc")
    port = DEFAULT_PORTS[protocol]
    return list(dict.fromkeys(parse_endpoint(u, default_port=port, flag=flag) for u in urls or ["127.0.0.1"]))
