"""Hub ids: the local cache first, a download with progress through huggingface_hub, and clear reasons when the
model cannot be had. A small local HTTP server plays the Hub (same API routes and headers), so nothing leaves the
machine."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from studio.errors import ModelLoadError
from studio.models.specs import ModelSpec
from tests.fake_hub import FakeHub, point_at
from tests.managers import cpu_manager


@pytest.fixture
def hub_env(tmp_path, monkeypatch, tiny_models):
    """The tiny LM published as `tiny/lm` (plus a stray .bin the studio must not fetch) on a fake Hub, and an
    empty Hugging Face cache."""
    from huggingface_hub import constants

    repo = tmp_path / "repo"
    shutil.copytree(tiny_models.causal_lm, repo)
    (repo / "pytorch_model.bin").write_bytes(b"not wanted")
    (repo / "original").mkdir()
    (repo / "original" / "consolidated.00.pth").write_bytes(b"not wanted either")
    hub = FakeHub({"tiny/lm": repo})
    cache = tmp_path / "hf-cache"
    point_at(monkeypatch, hub.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield hub, cache
    hub.close()


def test_a_hub_id_downloads_with_progress_then_loads_from_the_cache(hub_env, monkeypatch):
    from tqdm import tqdm

    from studio.models.loading import load_causal_lm

    hub, _cache = hub_env
    bars: list[tuple[str, int]] = []
    real_update = tqdm.update

    def update(self, n=1):  # gr.Progress(track_tqdm=True) reads these same tqdm bars
        bars.append((str(getattr(self, "desc", "")), int(n or 0)))
        return real_update(self, n)

    monkeypatch.setattr(tqdm, "update", update)
    spec = ModelSpec("chat", "tiny/lm", "hub")
    lm = load_causal_lm(spec)
    assert lm.model.config.model_type == "llama" and "snapshots" in lm.source
    assert "model.safetensors" in hub.gets
    assert not any(g.endswith((".bin", ".pth")) for g in hub.gets), hub.gets
    assert sum(n for _, n in bars) > 0, "the download reports progress"
    hub.gets.clear()
    hub.close()  # the Hub goes away: the cached copy still loads, with no request
    again = load_causal_lm(spec, offline=True)
    assert again.source == lm.source and hub.gets == []


def test_offline_and_not_downloaded_says_so(hub_env):
    from studio.models.loading import load_causal_lm

    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"tiny/lm is not downloaded yet and the studio runs offline") as err:
        load_causal_lm(ModelSpec("chat", "tiny/lm", "hub"), offline=True)
    assert "starter model" in err.value.tip and time.monotonic() - t0 < 5


def test_no_network_says_so_within_seconds(hub_env):
    from studio.models.loading import load_causal_lm

    hub, _ = hub_env
    hub.close()  # nothing listens on its port any more
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"Hugging Face Hub is out of reach"):
        load_causal_lm(ModelSpec("chat", "tiny/lm", "hub"))
    assert time.monotonic() - t0 < 10


def test_an_id_that_does_not_exist_says_so(hub_env):
    from studio.models.loading import load_causal_lm

    with pytest.raises(ModelLoadError, match=r"nobody/nothing does not exist on the Hugging Face Hub"):
        load_causal_lm(ModelSpec("chat", "nobody/nothing", "hub"))


def test_an_image_model_not_downloaded_says_why_before_loading(hub_env, tmp_path):
    """The Image tab's Hub models: offline, or with the Hub out of reach, a model not in the cache is one clear
    line within seconds, before any load is tried."""
    from studio.engines.image import ImageEngine

    manager = cpu_manager(tmp_path)
    spec = ModelSpec("image", "stabilityai/sd-turbo", "hub")
    offline = ImageEngine(manager, tmp_path / "out", tmp_path / "models", offline=True)
    with pytest.raises(ModelLoadError, match=r"sd-turbo is not downloaded and the studio is offline"):
        offline.check_available(spec)
    hub, _ = hub_env
    hub.close()
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"not downloaded yet and the Hugging Face Hub is out of reach"):
        ImageEngine(manager, tmp_path / "out", tmp_path / "models").check_available(spec)
    assert time.monotonic() - t0 < 10
    assert manager.records() == []  # nothing was loaded


# ----- the page's Download action (studio/models/hub_download.py) ---------------------------------------------


def wait_for(check, timeout: float = 120.0, every: float = 0.05):
    """Poll `check()` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s")


def test_download_reports_bytes_of_the_total_then_the_model_loads_with_no_network(hub_env, tmp_path):
    from studio.models.hub import cached_snapshot
    from studio.models.hub_download import HubDownloads

    hub, cache = hub_env
    hub.chunk_delay = 0.2  # a slow network: the small files are here well before the weights
    downloads = HubDownloads()
    seen: list[tuple[int, int]] = []
    assert downloads.start("tiny/lm").state == "checking"

    def progressed():
        s = downloads.status("tiny/lm")
        if s.state == "downloading":
            seen.append((s.done_bytes, s.total_bytes))
        return not s.running

    wait_for(progressed, every=0.01)
    status = downloads.status("tiny/lm")
    assert status.state == "done", status.message
    wanted = [p for p in hub.repos["tiny/lm"].rglob("*") if p.is_file() and p.suffix not in (".bin", ".pth")]
    total = sum(p.stat().st_size for p in wanted)
    assert status.total_bytes == status.done_bytes == total and status.files == len(wanted)
    partial = [d for d, t in seen if 0 < d < t]
    assert partial and all(t == total for _, t in seen), seen  # bytes done of the whole total, along the way
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    folder = Path(status.message)
    assert folder.is_relative_to(cache) and (folder / "model.safetensors").is_file()
    assert not any(g.endswith((".bin", ".pth")) for g in hub.gets), hub.gets
    assert cached_snapshot("tiny/lm") == folder and downloads.is_downloaded("tiny/lm")

    hub.close()  # no network from here: the plan and the load read the cache
    manager = cpu_manager(tmp_path)
    spec = ModelSpec("chat", "tiny/lm", "hub", precision="fp32")
    assert manager.plan(spec).estimate.weights_bytes > 0
    rec = manager.load(spec)
    assert rec.state == "loaded"
    with manager.acquire(spec) as lease:
        assert lease.model.model.config.model_type == "llama"


def test_cancel_stops_the_download_and_a_new_one_resumes(hub_env):
    from studio.models.hub import cached_snapshot
    from studio.models.hub_download import HubDownloads

    hub, _ = hub_env
    hub.chunk_delay = 1.0  # 64 KB a second: minutes for the weights
    downloads = HubDownloads()
    downloads.start("tiny/lm")
    wait_for(lambda: downloads.status("tiny/lm").done_bytes > 0)
    assert downloads.cancel("tiny/lm").running
    status = wait_for(lambda: (s := downloads.status("tiny/lm")).state != "downloading" and s)
    assert status.state == "cancelled" and 0 < status.done_bytes < status.total_bytes, status
    assert cached_snapshot("tiny/lm") is None  # not a usable model yet
    hub.chunk_delay = 0.0
    downloads.start("tiny/lm")
    assert downloads.wait("tiny/lm", 120).state == "done"
    assert cached_snapshot("tiny/lm") is not None


@pytest.mark.parametrize(
    ("repo", "refused", "words"),
    [
        ("nobody/nothing", None, ["nobody/nothing does not exist on the Hugging Face Hub", "Check the spelling"]),
        ("someone/private", 401, ["not found on the Hub without a login (401)", "hf auth login", "HF_TOKEN"]),
        ("someone/gated", 403, ["someone/gated is gated", "accept their licence", "hf auth login", "HF_TOKEN"]),
    ],
)
def test_a_download_that_the_hub_refuses_says_why(hub_env, repo, refused, words):
    from studio.models.hub_download import HubDownloads

    hub, _ = hub_env
    if refused:
        hub.refused[repo] = refused
    downloads = HubDownloads()
    downloads.start(repo)
    status = downloads.wait(repo, 60)
    assert status.state == "failed"
    for word in words:
        assert word in status.message, status.message


def test_a_download_with_the_hub_out_of_reach_says_so(hub_env):
    from studio.models.hub_download import HubDownloads

    hub, _ = hub_env
    hub.close()
    downloads = HubDownloads()
    downloads.start("tiny/lm")
    status = downloads.wait("tiny/lm", 30)
    assert status.state == "failed"
    assert "tiny/lm cannot be downloaded: the Hugging Face Hub is out of reach: 127.0.0.1 cannot be reached" in (
        status.message
    )
    assert "Connect this machine to the internet" in status.message


def test_hf_hub_offline_in_the_environment_is_named_not_called_reachable(hub_env, monkeypatch):
    """HF_HUB_OFFLINE=1 in the environment stops the library's every request while the Hub answers: the plan and
    the download say it is that variable, not the network."""
    from huggingface_hub import constants

    from studio.models.hub import local_snapshot
    from studio.models.hub_download import HubDownloads

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set in the studio's environment"):
        local_snapshot(ModelSpec("chat", "tiny/lm", "hub"), offline=False)
    downloads = HubDownloads()
    downloads.start("tiny/lm")
    status = downloads.wait("tiny/lm", 30)
    assert status.state == "failed"
    assert "tiny/lm cannot be downloaded: the Hugging Face Hub is out of reach: HF_HUB_OFFLINE is set" in (
        status.message
    )
    assert "Unset HF_HUB_OFFLINE" in status.message and "Connect this machine" not in status.message


def test_a_download_that_does_not_fit_on_the_disk_says_so_before_and_while_writing(hub_env, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from studio.models.hub_download import HubDownloads
    from tests.integration.test_faults import small_disk

    hub, _ = hub_env
    with small_disk(tmp_path / "small", "2m") as (disk, why):
        if disk is None:
            pytest.skip(f"cannot mount a tmpfs here: {why}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(disk.path / "hub"))
        disk.fill(leave=64 * 1024)  # the weights are ~480 KB
        downloads = HubDownloads()
        downloads.start("tiny/lm")
        status = downloads.wait("tiny/lm", 60)
        assert status.state == "failed"
        assert "Not enough disk space for tiny/lm: it needs" in status.message, status.message
        assert "HF_HOME" in status.message
        assert "model.safetensors" not in hub.gets  # nothing was half written
        disk.free_up()
        hub.chunk_delay = 0.5  # the disk fills up (another program) while the weights come in (seconds)
        downloads.start("tiny/lm")
        wait_for(lambda: 0 < (s := downloads.status("tiny/lm")).done_bytes < s.total_bytes)  # the small files
        disk.fill()
        status = downloads.wait("tiny/lm", 60)
        assert status.state == "failed"
        assert "The disk is full: tiny/lm could not be written to the Hugging Face cache" in status.message, status
        disk.free_up()
        hub.chunk_delay = 0.0
        downloads.start("tiny/lm")
        assert downloads.wait("tiny/lm", 60).state == "done"


def test_the_download_row_is_the_owners_and_follows_the_download(hub_env, tmp_path):
    """The page's handlers: a remote visitor of a shared studio sees no Download and is refused (nothing starts)
    unless the owner allows it; the owner's Download runs, the poll says bytes of the total, then done."""
    import gradio as gr

    from studio.config import StudioConfig
    from studio.context import build_context
    from studio.text import fmt_bytes
    from studio.ui import hub_panel, models_tab
    from studio.ui import messages as msg

    local = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"), headers={})
    remote = SimpleNamespace(client=SimpleNamespace(host="203.0.113.9"), headers={})
    ctx = build_context(StudioConfig(device="cpu", data_dir=tmp_path / "data"), start_monitor=False)
    allowed = build_context(
        StudioConfig(device="cpu", data_dir=tmp_path / "open", allow_remote_admin=True), start_monitor=False
    )
    try:
        panel = hub_panel.HubPanel(ctx, msg.DOWNLOAD_NEXT_MODELS, models_tab.download_source)
        row, _, _ = panel.offer("chat", "tiny/lm", request=remote)
        assert row.visible is False
        with pytest.raises(gr.Error, match="Remote visitors cannot download models on this studio"):
            panel.start("chat", "tiny/lm", request=remote)
        assert ctx.downloads.status("tiny/lm") is None  # nothing started
        row, line, _ = panel.offer("chat", "tiny/lm", request=local)
        assert row.visible is True and "tiny/lm is not downloaded yet" in line
        with pytest.raises(gr.Error, match="is not a Hugging Face id"):
            panel.start("chat", "not an id", request=local)

        line, timer, _ = panel.start("chat", "tiny/lm", request=local)
        assert timer.active is True and "tiny/lm" in line
        ctx.downloads.wait("tiny/lm", 120)
        line, timer, done = panel.poll("chat", "tiny/lm")
        status = ctx.downloads.status("tiny/lm")
        assert line.startswith(f"✅ tiny/lm is downloaded: {fmt_bytes(status.total_bytes)} in {status.files} files"), (
            line
        )
        assert "Press Load." in line and timer.active is False and done.startswith("tiny/lm@")
        row, _, _ = hub_panel.HubPanel(allowed, msg.DOWNLOAD_NEXT_MODELS, models_tab.download_source).offer(
            "chat", "tiny/lm", request=remote
        )
        assert row.visible is False  # downloaded: nothing to offer, for anyone
        line, _, done = hub_panel.HubPanel(allowed, msg.DOWNLOAD_NEXT_MODELS, models_tab.download_source).start(
            "chat", "tiny/lm", request=remote
        )
        assert "tiny/lm is downloaded already" in line and done == "tiny/lm"
    finally:
        ctx.close()
        allowed.close()
