"""The launch policy: who counts as remote, the API key, upload limits, and the share link's life cycle."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from studio.config import load_config
from studio.errors import ConfigError
from studio.security import PermissionDenied, SecurityPolicy, require_loaded_or_owner
from studio.sharing import ShareLink

POLICY = SecurityPolicy(api_key="sk-test-key-123", max_upload_bytes=10 * 1024**2, exposed=True)


@pytest.mark.parametrize(
    ("client", "headers", "remote"),
    [
        ("127.0.0.1", {"host": "127.0.0.1:7860"}, False),
        ("127.0.0.1", {"Host": "localhost:7860"}, False),
        ("::1", {"host": "[::1]:7860"}, False),
        ("127.0.0.1", {}, False),
        ("192.168.1.20", {"host": "192.168.1.5:7860"}, True),
        ("10.0.0.3", {"host": "127.0.0.1:7860"}, True),  # a forged Host does not make a LAN visitor local
        ("127.0.0.1", {"host": "a1b2c3.gradio.live"}, True),  # the share tunnel connects from loopback
        ("127.0.0.1", {"host": "127.0.0.1:7860", "x-forwarded-for": "203.0.113.9"}, True),
        (None, {}, True),  # unknown: treated as remote
        ("not-an-ip", {}, True),
    ],
)
def test_who_is_remote(client, headers, remote):
    assert POLICY.is_remote(client, headers) is remote


def test_remote_visitors_cannot_do_owner_things_unless_allowed():
    with pytest.raises(PermissionDenied, match=r"Remote visitors cannot change the memory budget") as err:
        POLICY.require_owner("203.0.113.9", {}, "change the memory budget")
    assert "--allow-remote-admin" in err.value.tip
    POLICY.require_owner("127.0.0.1", {"host": "localhost"}, "change the memory budget")  # the owner may
    SecurityPolicy(allow_remote_admin=True).require_owner("203.0.113.9", {}, "change the memory budget")


def test_remote_visitors_use_only_the_models_the_owner_loaded():
    class Rec:
        def __init__(self, key, name):
            self.key, self.name = key, name

    class Manager:
        def records(self):
            return [Rec("k1", "tiny-lm")]

    class Spec:
        def __init__(self, key, name):
            self.key, self.name = key, name

    class Req:
        def __init__(self, host, headers):
            self.client = type("C", (), {"host": host})()
            self.headers = headers

    remote = Req("203.0.113.9", {"host": "x.gradio.live"})
    require_loaded_or_owner(POLICY, Manager(), Spec("k1", "tiny-lm"), remote)
    with pytest.raises(
        PermissionDenied, match=r"can use the models the owner has loaded \(now: tiny-lm\), not load /etc"
    ):
        require_loaded_or_owner(POLICY, Manager(), Spec("k2", "/etc"), remote)
    require_loaded_or_owner(POLICY, Manager(), Spec("k2", "/etc"), Req("127.0.0.1", {"host": "127.0.0.1:1"}))


def test_api_key_check():
    assert POLICY.api_key_ok("Bearer sk-test-key-123")
    assert POLICY.api_key_ok("bearer sk-test-key-123")
    assert not POLICY.api_key_ok("Bearer sk-test-key-124")
    assert not POLICY.api_key_ok("sk-test-key-123")
    assert not POLICY.api_key_ok(None)
    assert SecurityPolicy().api_key_ok(None)  # no key set: open (local use)


def test_key_and_login_policy_from_the_config():
    local, gen = SecurityPolicy.from_config(load_config([], {}))
    assert local.api_key is None and gen is None and not local.exposed
    shared, gen = SecurityPolicy.from_config(load_config(["--share"], {}))
    assert gen and shared.api_key == gen and gen.startswith("sk-studio-") and len(gen) > 30 and shared.exposed
    again, gen2 = SecurityPolicy.from_config(load_config(["--listen"], {}))
    assert gen2 != gen
    given, gen3 = SecurityPolicy.from_config(load_config(["--listen", "--api-key", "my-own-key-1"], {}))
    assert given.api_key == "my-own-key-1" and gen3 is None
    assert SecurityPolicy.from_config(load_config(["--max-upload-mb", "2"], {}))[0].max_upload_bytes == 2 * 1024**2
    assert SecurityPolicy.from_config(load_config(["--allow-remote-admin"], {}))[0].allow_remote_admin


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--api-key", "short"], "--api-key must be at least 8 characters"),
        (["--api-key", "has a space"], "--api-key must be at least 8 characters"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be a positive number"),
        (["--max-upload-mb", "lots"], "max_upload_mb must be a number"),
    ],
)
def test_bad_security_flags(argv, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(argv, {})


def test_upload_limit_message():
    POLICY.check_upload_size(10 * 1024**2)
    with pytest.raises(PermissionDenied, match=r"The dataset is 11.0 MB; this studio accepts uploads up to 10 MB"):
        POLICY.check_upload_size(11 * 1024**2, "The dataset")


def _wait(link: ShareLink, status: str) -> None:
    deadline = time.monotonic() + 10
    while link.state.status != status and time.monotonic() < deadline:
        link.changed.wait(0.1)
        link.changed.clear()
    assert link.state.status == status, link.state


def test_a_share_link_that_cannot_be_made_is_one_line(capsys):
    def no_network(blocks):
        try:
            raise OSError("[Errno -2] Name or service not known")
        except OSError as exc:
            raise RuntimeError("Could not get share link from Gradio API Server.") from exc

    link = ShareLink(opener=no_network)
    link.start(None)
    _wait(link, "failed")
    line = link.state.line()
    assert "\n" not in line and "Could not get share link" in line and "Name or service not known" in line
    assert "keeps serving on this machine" in line
    assert capsys.readouterr().out.strip() == line


class _Blocks:
    share_url = None


def test_a_live_link_shows_its_expiry_and_revoke_closes_the_tunnel():
    """The tunnel here is a real child process standing in for Gradio's frp client (no share server offline)."""
    procs = []

    def opener(blocks):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.append(proc)
        return "https://abc123.gradio.live", proc.terminate

    blocks = _Blocks()
    link = ShareLink(opener=opener)
    link.start(blocks)
    _wait(link, "live")
    state = link.state
    assert blocks.share_url == "https://abc123.gradio.live"
    assert 6.9 * 86400 < state.expires - state.started <= 7 * 86400
    assert "abc123.gradio.live" in state.line() and "h left" in state.line()
    link.revoke()
    assert link.state.status == "revoked" and blocks.share_url is None
    assert procs[0].wait(5) is not None, "the tunnel process ended"
    assert "revoked" in link.state.line()
