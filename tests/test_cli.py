"""The command line itself: fast help, only working commands registered."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys; from tritonctl.cli import app; "
            "heavy = [m for m in ('torch', 'ultralytics', 'onnxruntime', 'cv2', 'docker', 'tritonclient') if m in sys.modules]; "
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_help_lists_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "tritonctl.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for cmd in ("serve", "status", "stop", "config"):
        assert cmd in result.stdout


def test_short_help_and_version() -> None:
    from conftest import run_cli

    from tritonctl import __version__

    short = run_cli("-h")
    assert short.returncode == 0 and "Usage" in short.stdout
    assert run_cli("detect", "-h").returncode == 0
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip().endswith(__version__)


def test_stop_with_nothing_running_is_success(tmp_path: object) -> None:
    """Cleanup scripts call `stop` unconditionally: nothing to stop exits 0 and says so once."""
    from conftest import free_ports, run_cli

    result = run_cli("stop", env={"TRITONCTL_STATE_DIR": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip().startswith("nothing to stop") and not result.stderr
    port = free_ports(1)[0]
    at = run_cli("stop", "--url", f"127.0.0.1:{port}", env={"TRITONCTL_STATE_DIR": str(tmp_path)})
    assert at.returncode == 0 and f"127.0.0.1:{port}" in at.stdout


def test_status_json_without_a_server_is_still_json() -> None:
    import json

    from conftest import free_ports, run_cli

    url = f"127.0.0.1:{free_ports(1)[0]}"
    result = run_cli("status", "--url", url, "--json")
    assert result.returncode == 4
    [entry] = json.loads(result.stdout)
    assert entry["url"] == url and entry["ready"] is False and "no Triton server answers" in entry["error"]


def test_usage_errors_are_one_line() -> None:
    """Typer's own usage errors (a 4-5 line box) become one line like every other error, naming the command's help."""
    from conftest import assert_one_line_error, run_cli

    cases = [
        (["detect", "video.mp4"], ["error: no model given: --model NAME", "--config"]),
        (["detect", "-m", "m"], ["error: no source given", "--config configs/cameras.yaml"]),
        (["config", "--model", "m.onnx"], ["Missing option '--name'", "(see tritonctl config --help)"]),
        (["detect", "video.mp4", "-m", "m", "--concurency", "4"], ["--concurency", "--concurrency", "tritonctl detect"]),
        (["detect", "video.mp4", "-m", "m", "--batch", "two"], ["'--batch'", "integer", "(see tritonctl detect --help)"]),
        (["stop", "--timeout", "soon"], ["'--timeout'", "(see tritonctl stop --help)"]),
        (["sevre"], ["No such command 'sevre'", "(see tritonctl --help)"]),
    ]
    for args, words in cases:
        result = run_cli(*args)
        assert_one_line_error(result, 2, *words)
        assert not result.stdout, result.stdout


def test_no_arguments_still_show_the_help() -> None:
    from conftest import run_cli

    result = run_cli()
    assert result.returncode == 2 and "Usage: tritonctl" in result.stdout and "serve" in result.stdout
    assert not result.stderr


def test_the_installed_command_goes_through_main() -> None:
    """`tritonctl` (pyproject's script) and `python -m tritonctl.cli` (the tests) share the entry point that makes
    usage errors one line."""
    from conftest import ROOT

    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert scripts.split() == ["tritonctl", "=", '"tritonctl.cli:main"']
