"""AppContext: the one object handed to UI builders and API routes. Built once in `main()`; no globals."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from studio.config import GIB, StudioConfig
from studio.engines.chat import ChatEngine
from studio.engines.embedding import EmbeddingEngine
from studio.engines.image import ImageEngine
from studio.engines.lane import GpuLane
from studio.engines.speech import SpeechEngine
from studio.memory.probes import MemoryProbe, detect_probe
from studio.memory.timeline import EventLog, MemoryMonitor
from studio.models.calibration import Calibration
from studio.models.discover import ModelDiscovery
from studio.models.hub_download import HubDownloads
from studio.models.keepalive import KeepAliveTimer
from studio.models.kinds import KindRegistry, LoadOptions, default_registry
from studio.models.manager import ModelManager
from studio.paths import StudioPaths
from studio.security import SecurityPolicy
from studio.training.runs import RunManager

if TYPE_CHECKING:
    from studio.sharing import ShareLink

log = logging.getLogger(__name__)


@dataclass
class AppContext:
    """Config, memory probes and monitor, the model manager and its kinds, the paths."""

    config: StudioConfig
    paths: StudioPaths
    probe: MemoryProbe
    monitor: MemoryMonitor
    events: EventLog
    kinds: KindRegistry
    manager: ModelManager
    chat: ChatEngine  # chat on the manager's models; also serves /v1/chat/completions
    image: ImageEngine  # Stable Diffusion on the manager's models; also serves /v1/images/generations
    speech: SpeechEngine  # Whisper on the manager's models; also serves /v1/audio/transcriptions
    training: RunManager  # fine-tune runs: run folders under paths.runs, one worker process at a time
    embedding: EmbeddingEngine  # embeddings of embedding and chat models; serves /v1/embeddings
    security: SecurityPolicy = field(default_factory=SecurityPolicy)  # logins, API key, remote visitors, uploads
    sharing: ShareLink | None = None  # the public link, when the studio runs with --share
    discovery: ModelDiscovery = field(default_factory=ModelDiscovery)  # other tools' models, rescanned every 10 s
    keep_alive: KeepAliveTimer | None = None  # parks or unloads idle models (--keep-alive, per model in Models)
    downloads: HubDownloads = field(default_factory=HubDownloads)  # Hub downloads the page starts and watches

    @property
    def device(self) -> str:
        """ "cuda" or "cpu": where models are loaded."""
        return self.manager.device

    def close(self) -> None:
        self.training.close()  # running workers save an adapter and stop
        self.monitor.stop()
        if self.keep_alive is not None:
            self.keep_alive.stop()


def resolve_device(config: StudioConfig, probe: MemoryProbe) -> str:
    """cuda when the probe found an NVIDIA GPU (and --device allows it), else cpu."""
    return "cuda" if probe.device_kind == "cuda" and config.device != "cpu" else "cpu"


def build_context(
    config: StudioConfig,
    *,
    probe: MemoryProbe | None = None,
    start_monitor: bool = True,
    monitor_interval: float = 1.0,
) -> AppContext:
    """Build everything the app needs. `probe` can be a fake behind the same interface (tests)."""
    paths = StudioPaths.under(config.data_dir)
    paths.create()
    probe = probe or detect_probe(config.device)
    device = resolve_device(config, probe)
    events = EventLog()
    kinds = default_registry()
    manager = ModelManager(
        probe=probe,
        kinds=kinds,
        calibration=Calibration(paths.calibration),
        events=events,
        device=device,
        budget_bytes=int(config.budget_gb * GIB) if config.budget_gb else None,
        reserve_bytes=int(config.reserve_gb * GIB),
        load_options=LoadOptions(offline=config.offline, cache_dir=paths.models, cpu_threads=config.cpu_threads),
        keep_alive_s=config.keep_alive * 60,
    )
    monitor = MemoryMonitor(
        probe, interval=monitor_interval, accounted=manager.accounted_bytes, budget=manager.budget_bytes
    )
    monitor.sample()
    keep_alive = KeepAliveTimer(manager.expire_idle)  # always: a model may get its own idle time in the Models tab
    if start_monitor:
        monitor.start()
        keep_alive.start()
    lane = GpuLane(config.max_queue)  # chat, image, speech and embeddings take turns on the device, page and API alike
    training = RunManager(manager, paths.runs, orphan_training=config.orphan_training)
    chat = ChatEngine(manager, lane=lane)
    training.adopt()  # workers a studio that died left training: their memory counts, one fine-tune at a time
    if config.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # libraries read this; the flag is the user's choice
    return AppContext(
        config=config,
        paths=paths,
        probe=probe,
        monitor=monitor,
        events=events,
        kinds=kinds,
        manager=manager,
        chat=chat,
        image=ImageEngine(manager, paths.outputs / "images", paths.models, offline=config.offline, lane=lane),
        speech=SpeechEngine(manager, lane=lane),
        training=training,
        embedding=EmbeddingEngine(manager, lane=lane, chat=chat),
        security=SecurityPolicy.from_config(config)[0],
        keep_alive=keep_alive,
        downloads=HubDownloads(offline=config.offline),
    )
