"""The package's structure (scripts/check_structure.py): stages import only downwards, no import circle, no module over
500 lines, and the CLI holds no run logic."""

from __future__ import annotations

import ast
import importlib.util
import sys

from conftest import ROOT


def _structure() -> object:
    spec = importlib.util.spec_from_file_location("check_structure", ROOT / "scripts" / "check_structure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_structure"] = module
    spec.loader.exec_module(module)
    return module


def test_no_import_runs_back_up_and_no_circle() -> None:
    s = _structure().measure()  # type: ignore[attr-defined]
    assert s.upward == [], s.upward
    assert s.circles == [], s.circles


def test_no_module_over_the_limit() -> None:
    s = _structure().measure()  # type: ignore[attr-defined]
    assert s.big == [], s.big


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path: object) -> None:
    """The rules can fail: a made-up graph with a circle is found, and a lower stage naming a higher one is flagged."""
    check = _structure()
    assert check._circles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]  # type: ignore[attr-defined]
    assert check._stage("tritonctl.core.files") == "core"  # type: ignore[attr-defined]
    assert check.ORDER.index("core") < check.ORDER.index("stream")  # type: ignore[attr-defined]


def test_cli_commands_only_parse_delegate_and_render() -> None:
    """No command function in tritonctl/cli/ holds a loop of its own over the work: the loops live in the stages."""
    for path in sorted((ROOT / "tritonctl" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command" for d in node.decorator_list):
                assert len(node.body) < 60, f"{path.name}:{node.name} is {len(node.body)} statements"
