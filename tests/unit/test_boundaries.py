"""Engines never import gradio; the UI never imports torch (DESIGN.md boundaries)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = """
import importlib, importlib.abc, pkgutil, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError('blocked import: ' + name)
        return None
BLOCKED = set(sys.argv[2].split(','))
sys.meta_path.insert(0, Block())
pkg = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(pkg.__path__, sys.argv[1] + '.'):
    importlib.import_module(info.name)
print('OK', sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED))
"""


def _import_with_blocked(package: str, blocked: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, package, blocked], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_engines_import_without_gradio():
    out = _import_with_blocked("studio.engines", "gradio,gradio_client")
    assert out.returncode == 0 and "OK []" in out.stdout, out.stderr[-2000:]


def test_ui_imports_without_torch():
    out = _import_with_blocked("studio.ui", "torch,transformers,diffusers,whisper,faster_whisper,peft,bitsandbytes")
    assert out.returncode == 0 and "OK []" in out.stdout, out.stderr[-2000:]


def test_the_blocker_really_blocks():
    out = _import_with_blocked("studio.ui", "gradio")
    assert out.returncode != 0 and "blocked import: gradio" in out.stderr
