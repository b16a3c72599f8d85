"""parse_endpoint: every form a user pastes into --url, and the garbage that must be one clear line."""

from __future__ import annotations

import pytest

from tritonctl.core.endpoint import Endpoint, parse_endpoint
from tritonctl.core.errors import BadInput


@pytest.mark.parametrize(("text", "url", "local"), [
    ("127.0.0.1:8000", "127.0.0.1:8000", True),
    ("http://127.0.0.1:8001", "127.0.0.1:8001", True),  # pasted with its scheme
    ("http://127.0.0.1:8001/", "127.0.0.1:8001", True),
    ("grpc://10.0.0.5:8001", "10.0.0.5:8001", False),
    ("HTTP://triton.example.com:80", "triton.example.com:80", False),
    ("localhost", "localhost:8000", True),  # the default port
    ("[::1]:8001", "[::1]:8001", True),
    ("[::1]", "[::1]:8000", True),
    ("[fe80::1]:9000", "[fe80::1]:9000", False),
    ("127.3.4.5:1", "127.3.4.5:1", True),
    ("  gpu-box_1:65535 ", "gpu-box_1:65535", False),
])
def test_valid_forms(text: str, url: str, local: bool) -> None:
    endpoint = parse_endpoint(text)
    assert endpoint.url == url and endpoint.local is local
    assert Endpoint(endpoint.host, endpoint.port) == endpoint  # a plain value: hashable, comparable


def test_default_port_and_helpers() -> None:
    assert parse_endpoint("triton", default_port=8001).port == 8001
    assert parse_endpoint("[::1]:8000").http == "http://[::1]:8000"
    assert parse_endpoint("h:8000").with_port(8002).url == "h:8002"
    assert str(parse_endpoint("h:1")) == "h:1"


@pytest.mark.parametrize(("text", "words"), [
    ("127.0.0.1:1910O", "not a number"),  # a typo: letter O for zero
    ("127.0.0.1:", "port is missing"),
    ("127.0.0.1:0", "outside 1..65535"),
    ("127.0.0.1:65536", "outside 1..65535"),
    ("127.0.0.1:-1", "not a number"),
    ("300.1.1.1:8000", "not a host name"),
    ("::1", "brackets"),
    ("::1:8000", "brackets"),
    ("[::1", "brackets"),
    ("[nope]:8000", "not an IPv6 address"),
    ("[::1]x", "brackets"),
    ("", "not an endpoint"),
    ("https://triton.example.com:443", "TLS endpoints are not supported"),
    ("http://", "not an endpoint"),
    ("http://h:8000/v2/models", "not an endpoint"),
    ("user@h:8000", "not an endpoint"),
    ("h 1:8000", "not an endpoint"),
    ("-h:8000", "not a host name"),
])
def test_garbage_is_one_clear_line(text: str, words: str) -> None:
    with pytest.raises(BadInput, match=words) as info:
        parse_endpoint(text, flag="--url")
    message = str(info.value)
    assert message.startswith("--url") and "\n" not in message


def test_flag_is_named() -> None:
    with pytest.raises(BadInput, match=r"^--metrics-url"):
        parse_endpoint("h:x", flag="--metrics-url")
