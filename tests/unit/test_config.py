"""Settings: precedence defaults < studio.toml < STUDIO_* env < CLI, and one-line errors naming the setting."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.app import check_port_free
from studio.config import StudioConfig, load_config
from studio.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config([], environ={})
    assert cfg.host == "127.0.0.1" and cfg.port == 7860 and not cfg.share and not cfg.listen
    assert cfg.device == "auto" and cfg.budget_gb is None and cfg.reserve_gb == 0.8
    assert not cfg.needs_login


def test_precedence_file_env_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studio.toml").write_text('port = 7001\nbudget_gb = 6\nreserve_gb = 0.5\nhost = "127.0.0.1"\n')
    cfg = load_config([], environ={})
    assert (cfg.port, cfg.budget_gb, cfg.reserve_gb) == (7001, 6.0, 0.5)
    cfg = load_config([], environ={"STUDIO_PORT": "7002", "STUDIO_OFFLINE": "yes"})
    assert (cfg.port, cfg.budget_gb, cfg.offline) == (7002, 6.0, True)
    cfg = load_config(["--port", "7003", "--budget-gb", "4"], environ={"STUDIO_PORT": "7002"})
    assert (cfg.port, cfg.budget_gb, cfg.reserve_gb) == (7003, 4.0, 0.5)
    assert cfg.config_file == Path("studio.toml")


def test_explicit_config_file_and_studio_table(tmp_path):
    path = tmp_path / "other.toml"
    path.write_text('[studio]\ndevice = "cpu"\ndata-dir = "~/x"\n')
    cfg = load_config(["--config", str(path)], environ={})
    assert cfg.device == "cpu" and cfg.data_dir == Path("~/x").expanduser()
    cfg = load_config([], environ={"STUDIO_CONFIG": str(path), "STUDIO_DEVICE": "auto"})
    assert cfg.device == "auto"


@pytest.mark.parametrize(
    ("argv", "env", "toml", "needle"),
    [
        (["--budget-gb", "-2"], {}, None, "--budget-gb"),
        (["--budget-gb", "lots"], {}, None, "--budget-gb"),
        (["--reserve-gb", "-1"], {}, None, "--reserve-gb"),
        (["--budget-gb", "1", "--reserve-gb", "2"], {}, None, "--reserve-gb"),
        (["--port", "70000"], {}, None, "--port"),
        (["--max-queue", "0"], {}, None, "--max-queue"),
        (["--max-queue", "two"], {}, None, "--max-queue"),
        ([], {"STUDIO_MAX_QUEUE": "-3"}, None, "--max-queue"),
        (["--auth", "nopassword"], {}, None, "--auth"),
        (["--auth-file", "/nonexistent/auth.txt"], {}, None, "--auth-file"),
        ([], {"STUDIO_PORT": "abc"}, None, "STUDIO_PORT"),
        ([], {"STUDIO_SHARE": "maybe"}, None, "STUDIO_SHARE"),
        ([], {}, "port = [", "studio.toml"),
        ([], {}, "colour = 3", "unknown setting 'colour'"),
        (["--config", "/nonexistent/studio.toml"], {}, None, "--config"),
    ],
)
def test_bad_values_name_the_setting(tmp_path, monkeypatch, argv, env, toml, needle):
    monkeypatch.chdir(tmp_path)
    if toml is not None:
        (tmp_path / "studio.toml").write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(argv, environ=env)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_config_file(tmp_path):
    path = tmp_path / "studio.toml"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(["--config", str(path)], environ={})


def test_auth_file(tmp_path):
    path = tmp_path / "auth.txt"
    path.write_text("# users\nalice:secret\nbob:hunter2\n")
    cfg = load_config(["--auth-file", str(path), "--listen"], environ={})
    assert cfg.needs_login and cfg.bind_host == "0.0.0.0"
    path.write_text("alice\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_config(["--auth-file", str(path)], environ={})


def test_sharing_needs_login():
    assert StudioConfig(share=True).needs_login
    assert StudioConfig(host="0.0.0.0").needs_login


def _run_launch(*args, cwd=ROOT, timeout=30):
    return subprocess.run(
        [sys.executable, "launch.py", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys, time; t=time.perf_counter(); sys.argv=['launch.py','--help']\n"
        "try:\n  import runpy; runpy.run_path('launch.py', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "heavy=[m for m in ('torch','transformers','diffusers','whisper','gradio') if m in sys.modules]\n"
        "print('HEAVY', heavy, 'SECONDS', time.perf_counter()-t)"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    wall = time.perf_counter() - t0
    assert "--budget-gb" in out.stdout and "--auth-file" in out.stdout and "--offline" in out.stdout
    assert "HEAVY [] " in out.stdout, out.stdout
    in_process = float(out.stdout.rsplit("SECONDS", 1)[1])
    assert in_process < 2.0 and wall < 2.0 + 3.0, (in_process, wall)  # wall includes interpreter start-up
    help_run = _run_launch("--help")
    assert help_run.returncode == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--budget-gb", "-1"], "--budget-gb"),
        (["--config", "/nope.toml"], "--config"),
        (["--data-dir", "/proc/forbidden"], "--data-dir"),
    ],
)
def test_bad_values_end_in_one_line(args, needle, tmp_path):
    out = _run_launch(*args, "--no-browser", "--port", str(_free_port()))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = _run_launch("--no-browser", "--port", str(port), "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"--port {port}" in out.stderr


def _time_wait_port() -> int:
    """A port whose only socket is in TIME-WAIT, as a killed studio leaves its port: the server side closes first.
    The listener binds as uvicorn does (SO_REUSEADDR): Linux lets a new bind share the port only with such sockets."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the side that closes first keeps the port in TIME-WAIT
        client.recv(1)  # the FIN has arrived
        client.close()
    return port


def test_port_check_accepts_a_port_left_in_time_wait_and_refuses_one_in_use():
    port = _time_wait_port()
    check_port_free("127.0.0.1", port)  # uvicorn binds with SO_REUSEADDR, so an immediate restart can listen here
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # the port is really usable as the server binds it, now that it listens
        s.listen()
        with pytest.raises(ConfigError, match=f"--port {port}: cannot listen"):
            check_port_free("127.0.0.1", port)
