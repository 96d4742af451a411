"""Seconds from `python launch.py` to the first HTTP 200, against a plain Gradio Blocks hello-world.

Both are started the same way (a fresh Python process, same machine, same run), several times each, alternating;
the median of each is printed with the ratio. Target: ratio <= 2.0.

    python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HELLO = """
import sys, gradio as gr
with gr.Blocks() as demo:
    gr.Markdown("hello")
demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), inbrowser=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_200(cmd: list[str], port: int, timeout: float = 120.0) -> float:
    """Start cmd, poll http://127.0.0.1:port/ until it answers 200; return the seconds it took."""
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.02)
        raise TimeoutError(f"{cmd} gave no HTTP 200 within {timeout} s")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    studio, hello = [], []
    with tempfile.TemporaryDirectory() as data:
        hello_path = str(Path(data) / "hello_world.py")
        Path(hello_path).write_text(HELLO)
        for i in range(args.runs + 1):  # the first round warms the OS file cache and is not counted
            port = free_port()
            s = time_to_200(
                [sys.executable, "launch.py", "--no-browser", "--port", str(port), "--data-dir", data], port
            )
            port = free_port()
            h = time_to_200([sys.executable, hello_path, str(port)], port)
            if i:
                studio.append(s)
                hello.append(h)
            print(f"run {i}{' (warm-up)' if not i else ''}: studio {s:.2f} s, hello-world {h:.2f} s", flush=True)
    s_med, h_med = statistics.median(studio), statistics.median(hello)
    print(f"studio startup (median of {args.runs}): {s_med:.2f} s")
    print(f"gradio hello-world (median of {args.runs}): {h_med:.2f} s")
    print(f"ratio studio/hello-world: {s_med / h_med:.2f}  (target <= 2.0)")


if __name__ == "__main__":
    main()
