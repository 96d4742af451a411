"""Idle unload (--keep-alive, per model in the Models tab) on a real tiny model under a CPU manager.

`expire_idle(now=...)` takes the clock as an argument, so the idle time passes without waiting for it.
"""

from __future__ import annotations

import time

import pytest

from studio.config import load_config
from studio.context import build_context
from studio.errors import ConfigError, StudioError
from studio.models.records import LOADED, PARKED, UNLOADED
from studio.models.specs import ModelSpec
from studio.models.tiny import build_tiny_causal_lm
from tests.managers import cpu_manager


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = build_tiny_causal_lm(tmp_path_factory.mktemp("keepalive") / "lm-idle", seed=4, hidden_size=64)
    return ModelSpec("chat", str(path), "folder", label="lm-idle")


def state(m, spec) -> str:
    return m.record(spec.key).state


def test_an_idle_model_is_parked_then_unloaded_but_never_while_leased(tmp_path, lm):
    m = cpu_manager(tmp_path, 10**9, keep_alive_s=300)
    m.load(lm)
    t0 = time.time()
    assert m.expire_idle(now=t0 + 60) == [] and state(m, lm) == LOADED  # one idle minute of five
    with m.acquire(lm):  # in use long past its idle time: never touched
        assert m.expire_idle(now=time.time() + 3600) == []
        assert state(m, lm) == LOADED
    done = m.expire_idle(now=time.time() + 301)
    assert done == ["lm-idle parked in RAM after 5 min idle"] and state(m, lm) == PARKED
    assert m.accounted_bytes() == 0
    assert m.expire_idle(now=time.time() + 60) == [] and state(m, lm) == PARKED  # parked just now
    done = m.expire_idle(now=time.time() + 301)
    assert done == ["lm-idle unloaded after 5 min idle"] and state(m, lm) == UNLOADED and m.parked_bytes() == 0
    details = [e.detail for e in m.events.since()]
    assert any(d.startswith("lm-idle parked in RAM (") and d.endswith("after 5 min idle") for d in details)
    assert any(d.startswith("lm-idle unloaded (after 5 min idle)") for d in details)
    with m.acquire(lm) as lease:  # it loads again on the next use
        assert lease.model is not None


def test_a_model_that_cannot_be_parked_is_unloaded(tmp_path, lm):
    m = cpu_manager(tmp_path, 10**9, keep_alive_s=60, park_budget_bytes=0)  # no RAM for parking
    m.load(lm)
    assert m.expire_idle(now=time.time() + 61) == ["lm-idle unloaded after 1 min idle"]
    assert state(m, lm) == UNLOADED


def test_per_model_idle_time_overrides_the_default(tmp_path, lm):
    m = cpu_manager(tmp_path, 10**9)  # default: never
    m.load(lm)
    assert m.keep_alive_for(lm.key) == 0 and m.record(lm.key).keep_alive_default
    assert m.expire_idle(now=time.time() + 10**6) == [] and state(m, lm) == LOADED
    m.set_keep_alive(lm.key, 30)
    rec = m.record(lm.key)
    assert rec.keep_alive == 30 and not rec.keep_alive_default
    assert m.expire_idle(now=time.time() + 31) == ["lm-idle parked in RAM after 30 s idle"]
    m.set_keep_alive(lm.key, 0)  # never, whatever the default says
    m.keep_alive_s = 60
    assert m.expire_idle(now=time.time() + 10**6) == [] and state(m, lm) == PARKED
    m.set_keep_alive(lm.key, None)  # back to the default
    assert m.keep_alive_for(lm.key) == 60
    with pytest.raises(StudioError, match="idle time must be from 0 to 10080 minutes, not -1"):
        m.set_keep_alive(lm.key, -60)


def test_the_studio_timer_unloads_an_idle_model(tmp_path, lm):
    cfg = load_config(["--keep-alive", "0.001", "--data-dir", str(tmp_path / "data"), "--device", "cpu"], environ={})
    ctx = build_context(cfg, monitor_interval=0.2)
    try:
        assert ctx.manager.keep_alive_s == pytest.approx(0.06)
        ctx.keep_alive.interval = 0.05  # the real thread, on a short clock
        ctx.manager.load(lm)
        deadline = time.monotonic() + 60
        while state(ctx.manager, lm) != UNLOADED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state(ctx.manager, lm) == UNLOADED
    finally:
        ctx.close()


@pytest.mark.parametrize(
    ("argv", "env", "value"),
    [([], {}, 0.0), (["--keep-alive", "5"], {}, 5.0), ([], {"STUDIO_KEEP_ALIVE": "2.5"}, 2.5)],
)
def test_keep_alive_flag_and_env(tmp_path, argv, env, value):
    cfg = load_config([*argv, "--data-dir", str(tmp_path)], environ=env)
    assert cfg.keep_alive == value


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--keep-alive", "-1"], {}, "--keep-alive must be a number of minutes from 0 to 10080, not -1"),
        (["--keep-alive", "soon"], {}, "--keep-alive: keep_alive must be a number, not 'soon'"),
        ([], {"STUDIO_KEEP_ALIVE": "nan"}, "--keep-alive must be a number of minutes from 0 to 10080, not nan"),
        (["--keep-alive", "20000"], {}, "from 0 to 10080, not 20000"),
    ],
)
def test_bad_keep_alive_names_the_flag(tmp_path, argv, env, needle):
    with pytest.raises(ConfigError) as info:
        load_config([*argv, "--data-dir", str(tmp_path)], environ=env)
    assert needle in info.value.message
