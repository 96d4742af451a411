"""Hardening round two: which web pages may call /v1 and /sdapi, forwarding headers, the lockout after repeated
wrong passwords or keys, and one answer for a remote visitor's server paths. The guard runs on a small app here;
tests/ui/test_sharing.py and tests/integration/test_openai_api.py check the same on a real studio."""

from __future__ import annotations

import fastapi
import pytest
from fastapi.responses import JSONResponse
from starlette.testclient import TestClient

from studio.api.guard import V1Guard
from studio.config import load_config
from studio.errors import ConfigError
from studio.security import FailureLimiter, PermissionDenied, SecurityPolicy, require_loaded_choice_or_owner

PORT = 7860
LOCAL = SecurityPolicy(port=PORT)
SHARED = SecurityPolicy(api_key="sk-test-key-123", exposed=True, login=True, port=PORT)
CHAT = "/v1/chat/completions"
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.mark.parametrize(
    "headers",
    [
        {"forwarded": "for=203.0.113.9"},
        {"x-real-ip": "203.0.113.9"},
        {"x-forwarded-host": "studio.example.com"},
        {"x-forwarded-proto": "https"},
        {"x-forwarded-for": "127.0.0.1"},  # forged by the client, passed through by a proxy on this machine
        {"via": "1.1 nginx"},
    ],
)
def test_every_forwarding_header_makes_a_visitor_remote(headers):
    assert LOCAL.is_remote("127.0.0.1", {"host": f"127.0.0.1:{PORT}", **headers})
    assert not LOCAL.is_remote("127.0.0.1", {"host": f"127.0.0.1:{PORT}"})


@pytest.mark.parametrize(
    ("policy", "origin", "host", "ok"),
    [
        (LOCAL, None, f"127.0.0.1:{PORT}", True),  # curl, the openai client
        (LOCAL, f"http://127.0.0.1:{PORT}", f"127.0.0.1:{PORT}", True),  # the studio's own page
        (LOCAL, f"http://localhost:{PORT}", f"127.0.0.1:{PORT}", True),
        (LOCAL, f"http://[::1]:{PORT}", f"[::1]:{PORT}", True),
        (LOCAL, "http://localhost:8000", "localhost:8000", True),  # its own page through a port forward
        (LOCAL, "http://evil.example", f"127.0.0.1:{PORT}", False),
        (LOCAL, "http://localhost:3000", f"127.0.0.1:{PORT}", False),  # another program's page on this machine
        (LOCAL, f"https://127.0.0.1:{PORT}", f"127.0.0.1:{PORT}", True),  # the studio's port, any scheme
        (LOCAL, "null", f"127.0.0.1:{PORT}", False),  # a sandboxed frame or a file:// page
        (LOCAL, f"http://evil.example:{PORT}", f"evil.example:{PORT}", False),  # DNS rebinding
        (SHARED, "http://192.168.1.5:7860", "192.168.1.5:7860", True),  # --listen: its page on the network
        (SHARED, "http://evil.example", "192.168.1.5:7860", False),
        (SecurityPolicy(port=PORT, allowed_origins=("https://app.example",)), "https://app.example", "x", True),
        (SecurityPolicy(port=PORT, allowed_origins=("https://app.example",)), "https://app.example:444", "x", False),
    ],
)
def test_which_pages_may_call_the_api(policy, origin, host, ok):
    assert policy.origin_ok(origin, host, "http") is ok


def test_allowed_origins_flag():
    policy, _ = SecurityPolicy.from_config(
        load_config(["--allowed-origins", "https://a.example, http://pc:3000/"], {})
    )
    assert policy.allowed_origins == ("https://a.example", "http://pc:3000") and policy.port == 7860
    assert policy.origin_ok("http://pc:3000", "127.0.0.1:7860")
    for bad in ("https://a.example/path", "null", "ftp://a.example", "http://a:99999"):
        with pytest.raises(ConfigError, match="--allowed-origins: .* is not a web origin"):
            load_config(["--allowed-origins", bad], {})
    assert SecurityPolicy.from_config(load_config(["--auth", "a:b"], {}))[0].login
    assert not SecurityPolicy.from_config(load_config([], {}))[0].login


def test_failure_limiter_locks_out_then_forgives_and_stays_small():
    now = [1000.0]
    limiter = FailureLimiter(limit=10, window=60, lockout=30, max_clients=100, clock=lambda: now[0])
    for _ in range(9):
        assert limiter.failed("a") == 0
    assert limiter.retry_after("a") == 0
    assert limiter.failed("a") == 31 and limiter.retry_after("a") == 31
    assert limiter.retry_after("b") == 0  # per client
    now[0] += 31
    assert limiter.retry_after("a") == 0  # forgiven, with a fresh count
    assert limiter.failed("a") == 0
    now[0] += 61
    for _ in range(9):
        limiter.failed("c")
    now[0] += 61  # failures older than the window are forgotten
    assert limiter.failed("c") == 0
    for i in range(1000):
        limiter.failed(f"client-{i}")
    assert len(limiter) == 100  # bounded: the oldest clients go first


def _app(policy: SecurityPolicy) -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.post(CHAT)
    async def chat(request: fastapi.Request) -> JSONResponse:
        return JSONResponse({"got": len(await request.body())})

    @app.post("/v1/audio/transcriptions")
    async def transcribe(request: fastapi.Request) -> JSONResponse:
        return JSONResponse({"got": len(await request.body())})

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: fastapi.Request) -> JSONResponse:
        return JSONResponse({"images": []})

    @app.post("/sdapi/v1/interrupt")
    async def interrupt() -> JSONResponse:
        return JSONResponse({})

    @app.post("/login")
    async def login(request: fastapi.Request) -> JSONResponse:
        form = await request.form()
        ok = form.get("password") == "right"
        return JSONResponse({"success": ok}, status_code=200 if ok else 400)

    app.add_middleware(V1Guard, policy=policy)
    return app


def _client(policy: SecurityPolicy) -> TestClient:
    return TestClient(_app(policy), base_url=f"http://127.0.0.1:{PORT}", client=("127.0.0.1", 50000))


def test_a_foreign_page_cannot_post_to_the_api_in_any_form():
    with _client(LOCAL) as c:
        evil = {"origin": "http://evil.example"}
        for content_type in ("text/plain", "application/json", "application/x-www-form-urlencoded"):
            r = c.post(CHAT, content=BODY, headers={**evil, "content-type": content_type})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin", r.text
            assert "--allowed-origins" in r.json()["error"]["message"]
        files = {"file": ("a.wav", b"RIFF....")}
        r = c.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1"}, headers=evil)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin", r.text
        r = c.post("/sdapi/v1/txt2img", content=b"{}", headers={**evil, "content-type": "text/plain"})
        assert r.status_code == 403 and "not allowed" in r.json()["detail"], r.text
        r = c.get("/v1/models", headers=evil)
        assert r.status_code == 403
        # the studio's own page, and programs that send no Origin
        own = {"origin": f"http://127.0.0.1:{PORT}", "content-type": "application/json"}
        assert c.post(CHAT, content=BODY, headers=own).status_code == 200
        assert c.post(CHAT, content=BODY, headers={"content-type": "application/json"}).status_code == 200
        assert c.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1"}).status_code == 200


def test_json_routes_take_only_json():
    with _client(LOCAL) as c:
        for headers in ({"content-type": "text/plain"}, {}, {"content-type": "application/x-www-form-urlencoded"}):
            r = c.post(CHAT, content=BODY, headers=headers)
            assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
            assert "Content-Type: application/json" in r.json()["error"]["message"]
        r = c.post("/sdapi/v1/txt2img", content=b"{}", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "application/json" in r.json()["detail"]
        ok = {"content-type": "application/json; charset=utf-8"}
        assert c.post(CHAT, content=BODY, headers=ok).status_code == 200
        assert c.post("/sdapi/v1/txt2img", content=b"{}", headers=ok).status_code == 200
        # A1111 clients post interrupt with no body and no Content-Type (webuiapi); a foreign page still cannot
        assert c.post("/sdapi/v1/interrupt").status_code == 200
        r = c.post("/sdapi/v1/interrupt", headers={"origin": "http://evil.example", "content-type": "text/plain"})
        assert r.status_code == 403


def test_wrong_api_keys_are_locked_out_per_client():
    with _client(SHARED) as c:
        json_type = {"content-type": "application/json"}
        guesser = {**json_type, "x-forwarded-for": "203.0.113.7", "authorization": "Bearer sk-guess-000"}
        for _ in range(10):
            assert c.post(CHAT, content=BODY, headers=guesser).status_code == 401
        r = c.post(CHAT, content=BODY, headers={**guesser, "authorization": "Bearer sk-test-key-123"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_failures", r.text
        assert 0 < int(r.headers["retry-after"]) <= 61
        owner = {**json_type, "authorization": "Bearer sk-test-key-123"}  # another client: not locked out
        assert c.post(CHAT, content=BODY, headers=owner).status_code == 200
        r = c.post("/sdapi/v1/txt2img", content=b"{}", headers={**owner, "x-forwarded-for": "203.0.113.7"})
        assert r.status_code == 429 and r.headers["retry-after"]  # the lockout covers /sdapi too
        assert c.post("/sdapi/v1/txt2img", content=b"{}", headers=owner).status_code == 200


def test_wrong_passwords_are_locked_out_per_client():
    with _client(SHARED) as c:
        visitor = {"x-forwarded-for": "203.0.113.8"}
        for _ in range(10):
            assert c.post("/login", data={"username": "u", "password": "wrong"}, headers=visitor).status_code == 400
        r = c.post("/login", data={"username": "u", "password": "right"}, headers=visitor)
        assert r.status_code == 429 and "try again in" in r.json()["detail"] and r.headers["retry-after"], r.text
        assert c.post("/login", data={"username": "u", "password": "right"}).status_code == 200


class _Rec:
    def __init__(self, key: str, name: str) -> None:
        self.key, self.name = key, name


class _Spec:
    def __init__(self, source: str) -> None:
        self.source = source


class _Manager:
    def models(self, kind: str) -> list:
        return [(_Rec("k1", "tiny-lm"), _Spec("/models/tiny-lm"))] if kind == "chat" else []


class _Req:
    def __init__(self, host: str, headers: dict) -> None:
        self.client = type("C", (), {"host": host})()
        self.headers = headers


def test_remote_visitors_get_one_answer_for_any_server_path(tmp_path):
    remote = _Req("127.0.0.1", {"host": "x.gradio.live"})
    existing = tmp_path / "secret.txt"
    existing.write_text("not a model")
    answers = set()
    for path in (str(existing), str(tmp_path / "missing.txt"), str(tmp_path), "/etc/shadow", "org/model"):
        with pytest.raises(PermissionDenied) as err:
            require_loaded_choice_or_owner(SHARED, _Manager(), "chat", path, remote)
        answers.add(str(err.value))
    assert len(answers) == 1 and "can use the models the owner has loaded (now: tiny-lm)" in answers.pop()
    for loaded in ("/models/tiny-lm", "tiny-lm", "k1"):
        require_loaded_choice_or_owner(SHARED, _Manager(), "chat", loaded, remote)
    with pytest.raises(PermissionDenied, match=r"now: none yet"):
        require_loaded_choice_or_owner(SHARED, _Manager(), "image", "/models/tiny-lm", remote)
    owner = _Req("127.0.0.1", {"host": "127.0.0.1:7860"})
    require_loaded_choice_or_owner(SHARED, _Manager(), "chat", str(existing), owner)
    admin = SecurityPolicy(allow_remote_admin=True)
    require_loaded_choice_or_owner(admin, _Manager(), "chat", str(existing), remote)
