"""The sink URL: `mqtt://[user:pass@]host:port/topic`, `redis://…/stream`, `nats://…/subject`, with `?kinds=` to choose
the message kinds sent; checked before anything starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from tritonctl.core.errors import BadInput

DEFAULT_PORTS = {"mqtt": 1883, "redis": 6379, "nats": 4222}
POLICIES = ("drop-oldest", "drop-newest", "block")
KINDS = ("frame", "object")
EXAMPLES = "mqtt://127.0.0.1:1883/tritonctl/detections, redis://127.0.0.1:6379/detections, nats://127.0.0.1:4222/detections"


@dataclass(frozen=True)
class SinkSpec:
    kind: str  # mqtt, redis, nats
    host: str
    port: int
    target: str  # MQTT topic, Redis stream key, NATS subject
    kinds: tuple[str, ...] = KINDS  # message kinds sent (`?kinds=object`: object events only)
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed

    @property
    def url(self) -> str:
        """The URL without credentials: what logs and the summary show."""
        query = "" if self.kinds == KINDS else "?kinds=" + ",".join(self.kinds)
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6
        return f"{self.kind}://{host}:{self.port}/{self.target}{query}"


def parse_sink_url(text: str) -> SinkSpec:
    """`mqtt://host[:1883]/topic`, `redis://host[:6379]/stream`, `nats://host[:4222]/subject`, optionally
    `user:password@host` and `?kinds=frame,object`. Anything else: BadInput, one line saying what to write."""
    parts = urlsplit(text.strip())
    kind = parts.scheme.lower()
    if kind not in DEFAULT_PORTS:
        raise BadInput(f"--sink {text!r}: unknown broker {parts.scheme or '(none)'!r}; use one of {EXAMPLES}")
    _check_fragment(text, kind)
    if not parts.hostname:
        raise BadInput(f"--sink {text!r}: no host; write it as {kind}://HOST:PORT/{_target_word(kind)}")
    try:
        port = DEFAULT_PORTS[kind] if parts.port is None else parts.port
    except ValueError:  # urlsplit refuses ports that are not 0..65535 integers
        port = 0
    if not 1 <= port <= 65535:
        raise BadInput(f"--sink {text!r}: the port is not a number 1..65535")
    target = unquote(parts.path.lstrip("/"))
    _check_target(text, kind, target)
    return SinkSpec(kind, parts.hostname, port, target, _parse_kinds(text, parts.query),
                    unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password else None)


def _target_word(kind: str) -> str:
    return {"mqtt": "TOPIC", "redis": "STREAM", "nats": "SUBJECT"}[kind]


def _check_fragment(text: str, kind: str) -> None:
    """A '#' starts a URL fragment, which urlsplit cuts off without a word: `mqtt://h/a/#` would publish to `a/`."""
    if "#" not in text:
        return
    rest = text.split("://", 1)[-1]
    if kind == "mqtt" and "/" in rest and rest.index("#") > rest.index("/"):  # in the topic: the wildcard
        raise BadInput(f"--sink {text!r}: MQTT wildcards (+, #) are for subscribing; publish to a plain topic")
    raise BadInput(f"--sink {text!r}: '#' starts a URL fragment, which would be dropped; write a '#' in a "
                   f"{_target_word(kind).lower()}, user or password as %23")


def _check_target(text: str, kind: str, target: str) -> None:
    # Each broker's own rules, checked before the run starts rather than failing on the first publish.
    word = _target_word(kind).lower()
    if not target:
        raise BadInput(f"--sink {text!r}: no {word}; write it as {kind}://HOST:PORT/{_target_word(kind)}")
    if kind == "mqtt" and ("+" in target or "#" in target):
        raise BadInput(f"--sink {text!r}: MQTT wildcards (+, #) are for subscribing; publish to a plain topic")
    if kind == "nats":
        tokens = target.split(".")
        if any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens) or "/" in target:
            raise BadInput(f"--sink {text!r}: {target!r} is not a NATS subject: dot-separated tokens without "
                           f"spaces, wildcards or slashes, e.g. tritonctl.detections")


def _parse_kinds(text: str, query: str) -> tuple[str, ...]:
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - {"kinds"})
    if unknown:
        raise BadInput(f"--sink {text!r}: unknown option {unknown[0]!r}; the only option is ?kinds=frame,object")
    if "kinds" not in options:
        return KINDS
    kinds = tuple(k.strip() for v in options["kinds"] for k in v.split(",") if k.strip())
    if not kinds or any(k not in KINDS for k in kinds):
        raise BadInput(f"--sink {text!r}: kinds must be frame, object or frame,object")
    return tuple(k for k in KINDS if k in kinds)
