"""Memory measures for an image run: what attention slicing, VAE tiling and CPU offload leave on the device.

`measure_stages` lists the sets of measures tried in turn, `need_with` the bytes a run needs under one set
(the estimate's runtime split between the UNet and the VAE decode), and a `MemoryChoice` records the set chosen
and the smaller workload the manager then accounts.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.models.estimate import Workload
from studio.models.manager import fmt_bytes

ATTENTION_SLICING = "attention slicing"
VAE_TILING = "VAE tiling"
CPU_OFFLOAD = "model CPU offload"
ONE_AT_A_TIME = "one image at a time"
UNET_SHARE = 0.8  # the denoiser's share of a SD pipeline's weights (SD 1.5: 0.81, SDXL: 0.74): on the device
ATTENTION_SLICED = 0.5  # the UNet's activations left with attention computed in two slices
VAE_TILE_PIXELS = 512 * 512  # diffusers decodes in tiles of about this size, one image at a time


@dataclass(frozen=True)
class MemoryChoice:
    """How a run fits the budget: the measures switched on and the workload the manager accounts."""

    measures: tuple[str, ...]
    accounted: Workload  # what the lease is accounted as (smaller than the real one when measures are on)
    need: int  # bytes the run needs on the device with these measures
    room: int  # bytes the budget has, or can free by evicting idle models

    def describe(self) -> str:
        if not self.measures:
            return f"fits without memory measures ({fmt_bytes(self.need)} of {fmt_bytes(self.room)} available)"
        return (
            f"{', '.join(self.measures)} switched on: the run needs {fmt_bytes(self.need)} with them, "
            f"{fmt_bytes(self.room)} is available"
        )


def measure_stages(device: str) -> list[tuple[str, ...]]:
    stages = [(), (ATTENTION_SLICING,), (ATTENTION_SLICING, VAE_TILING)]
    if device == "cuda":  # offloading to the CPU means nothing when the model already runs there
        stages.append((ATTENTION_SLICING, VAE_TILING, CPU_OFFLOAD))
    return stages


def need_with(measures: tuple[str, ...], weights: int, fixed: int, per_pixel: float, pixels: int, batch: int) -> int:
    """Device bytes with `measures`: the runtime's pixel term is split between the UNet and the VAE decode."""
    unet = vae = per_pixel * pixels * batch / 2
    if ATTENTION_SLICING in measures:
        unet *= ATTENTION_SLICED
    if VAE_TILING in measures:  # tiled and sliced: one tile of one image at a time
        vae = per_pixel * min(pixels, VAE_TILE_PIXELS) / 2
    on_device = weights * UNET_SHARE if CPU_OFFLOAD in measures else weights
    return int(on_device + fixed + unet + vae)
