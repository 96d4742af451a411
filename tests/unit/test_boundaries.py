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


def test_export_imports_without_torch_or_gradio():
    """The export's CLI answers --help and bad input fast, and the page can import its API (torch loads inside)."""
    blocked = "torch,transformers,peft,gguf,llama_cpp,numpy,safetensors,gradio,gradio_client"
    out = _import_with_blocked("studio.export", blocked)
    assert out.returncode == 0 and "OK []" in out.stdout, out.stderr[-2000:]


def test_the_blocker_really_blocks():
    out = _import_with_blocked("studio.ui", "gradio")
    assert out.returncode != 0 and "blocked import: gradio" in out.stderr


# ----- ui/ and api/ speak to the engines and the manager through public methods only ---------------------------

ROOMS_BELOW = {"manager", "chat", "image", "speech", "training"}  # ctx.manager, ctx.chat, … and names bound to them


def _reaches_past(tree) -> list[tuple[int, str]]:
    """(line, text) of each private attribute of the manager or an engine, and of each direct manager.acquire."""
    import ast

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if owner_name not in ROOMS_BELOW:
            continue
        private = node.attr.startswith("_") and not node.attr.startswith("__")
        if private or (owner_name == "manager" and node.attr == "acquire"):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_ui_and_api_call_no_private_method_of_the_manager_or_an_engine():
    import ast

    offenders = []
    for folder in ("ui", "api"):
        for path in sorted((ROOT / "studio" / folder).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            offenders += [f"{path.relative_to(ROOT)}:{line}: {text}" for line, text in _reaches_past(tree)]
    assert not offenders, "ui/ and api/ must use public methods (a missing one belongs below):\n" + "\n".join(
        offenders
    )


def test_the_reach_check_finds_what_it_looks_for():
    import ast

    code = "ctx.manager._plan_room(None)\nwith ctx.manager.acquire(spec):\n    pass\nself.chat._lock\nctx.manager.plan(s)\n"
    assert [text for _, text in _reaches_past(ast.parse(code))] == [
        "ctx.manager._plan_room",
        "ctx.manager.acquire",
        "self.chat._lock",
    ]
