"""The image engine on the tiny random SD pipeline, through the real context, manager, loaders and diffusers."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.config import GIB, StudioConfig
from studio.context import build_context
from studio.engines.image_memory import ATTENTION_SLICING, ONE_AT_A_TIME, VAE_TILING
from studio.engines.image_params import ImageParams, params_from_infotext, parse_infotext, read_png_parameters
from studio.errors import InputError, ModelLoadError, StudioOutOfMemory
from studio.models.specs import ModelSpec

BASE = ImageParams(
    prompt="a red cat on a sofa", negative_prompt="blurry", sampler="Euler a", steps=3, width=64, height=64
)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    c = build_context(StudioConfig(device="cpu", data_dir=tmp_path_factory.mktemp("image-data")), start_monitor=False)
    yield c
    c.close()


@pytest.fixture(scope="module")
def spec(tiny_models) -> ModelSpec:
    return ModelSpec("image", str(tiny_models.sd_pipeline), "folder", "fp32", "cpu")


def run(ctx, spec, params, **kwargs):
    *_, last = ctx.image.generate(spec, params, **kwargs)
    assert last.report is not None
    return last


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_same_seed_same_pixels_and_other_seeds_differ(ctx, spec):
    a = run(ctx, spec, replace(BASE, seed=1234)).images
    b = run(ctx, spec, replace(BASE, seed=1234)).images
    c = run(ctx, spec, replace(BASE, seed=1235)).images
    assert a[0].path != b[0].path and a[0].path.is_file() and b[0].path.is_file()
    assert np.array_equal(pixels(a[0].path), pixels(b[0].path))
    assert not np.array_equal(pixels(a[0].path), pixels(c[0].path))
    assert a[0].path.parent.parent == ctx.paths.outputs / "images"
    assert a[0].path.name.endswith("-1234.png")


def test_batches_use_consecutive_seeds_and_random_seed_is_reported(ctx, spec):
    last = run(ctx, spec, replace(BASE, seed=-1, batch_size=2, batch_count=2))
    seeds = [s.seed for s in last.images]
    assert len(seeds) == 4 and seeds == list(range(seeds[0], seeds[0] + 4))
    assert last.report.first_seed == seeds[0] and last.report.seeds == tuple(seeds)
    assert str(seeds[0]) in last.report.summary()
    for saved in last.images:
        assert parse_infotext(read_png_parameters(saved.path))["Seed"] == str(saved.seed)


def test_png_parameters_hold_every_setting_and_restore_reproduces_the_image(ctx, spec):
    params = ImageParams(
        prompt="a lighthouse, at dusk: oil painting",
        negative_prompt="low quality\nwatermark",
        sampler="DPM++ 2M Karras",
        steps=4,
        cfg_scale=6.5,
        width=72,
        height=64,
        seed=987654,
    )
    saved = run(ctx, spec, params).images[0]
    with Image.open(saved.path) as img:
        text = img.info["parameters"]  # read back with Pillow
    assert text.startswith("a lighthouse, at dusk: oil painting\nNegative prompt: low quality\nwatermark\n")
    last_line = text.splitlines()[-1]
    assert last_line.startswith("Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 987654")
    assert "Size: 72x64" in last_line and "Model: sd-pipeline-seed0" in last_line
    restored = params_from_infotext(text)
    assert restored.params == params and restored.model == "sd-pipeline-seed0" and not restored.notes
    again = run(ctx, spec, restored.params).images[0]
    assert np.array_equal(pixels(saved.path), pixels(again.path))


def test_image_to_image_and_an_init_file_that_is_not_an_image(ctx, spec, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (80, 80), (200, 30, 30)).save(init)
    params = replace(BASE, init_image=str(init), strength=0.5, steps=4, seed=7)
    last = run(ctx, spec, params)
    assert len(last.images) == 1 and last.done_steps == 2  # 4 steps x strength 0.5
    assert "Denoising strength: 0.5" in last.images[0].infotext
    assert Image.open(last.images[0].path).size == (64, 64)
    bad = tmp_path / "notes.png"
    bad.write_text("this is text, not a picture")
    with pytest.raises(InputError, match="init image notes.png is not an image"):
        run(ctx, spec, replace(params, init_image=str(bad)))


def test_stop_mid_run_keeps_the_finished_images(ctx, spec):
    steps = BASE.steps
    flag = {"stop": False}

    def on_step(done: int, total: int) -> None:
        if done == steps + 1:  # the first step of the second batch
            flag["stop"] = True

    before = set(ctx.image.gallery())
    last = run(ctx, spec, replace(BASE, seed=50, batch_count=3), should_stop=lambda: flag["stop"], on_step=on_step)
    assert last.report.stopped and last.report.seeds == (50,)
    assert "stopped after 1 of 3" in last.report.summary()
    # the finished image, and the one Stop landed in, decoded at its first step and marked as partial
    assert [s.seed for s in last.images] == [50, 51] and last.report.partial == (51,)
    assert "1 partial image kept (step 1 of 3)" in last.report.summary()
    finished, partial = (s.path for s in last.images)
    assert set(ctx.image.gallery()) - before == {finished, partial}
    assert partial.name.endswith("-51-partial.png") and not finished.name.endswith("partial.png")
    assert read_png_parameters(partial).endswith("Stopped at: step 1 of 3")
    assert "Stopped at" not in read_png_parameters(finished)
    with Image.open(partial) as img:
        assert img.size == (64, 64)
    assert params_from_infotext(read_png_parameters(partial), BASE).params.seed == 51  # it restores like any PNG


def test_progress_reads_image_step_and_time_left_and_ends_idle(ctx, spec):
    seen = []

    def on_step(done: int, total: int) -> None:
        seen.append(ctx.image.progress())

    before = ctx.image.progress().finished_runs
    run(ctx, spec, replace(BASE, seed=70, batch_size=2, batch_count=2), on_step=on_step)
    # every step of each batch, image numbers per batch, a time left once a step is timed
    assert [(p.image, p.step, p.steps) for p in seen] == [(1, s, 3) for s in (1, 2, 3)] + [
        (3, s, 3) for s in (1, 2, 3)
    ]
    assert all(p.phase == "drawing" and p.eta is not None for p in seen)
    assert re.fullmatch(r"Images 3–4 of 4 · step 2 of 3 · about \d+ s left", seen[4].line())
    end = ctx.image.progress()
    assert not end.running and end.line() == "" and end.finished_runs == before + 1


def test_progress_line_is_one_clean_line():
    from studio.engines.image import RunProgress

    p = RunProgress(phase="drawing", image=2, images=3, step=13, steps=20, eta=5.4)
    assert p.line() == "Image 2 of 3 · step 13 of 20 · about 5 s left"
    assert RunProgress(phase="drawing", image=1, images=1, step=1, steps=180, eta=600).line().endswith("10 min left")
    assert RunProgress(phase="loading").line() == "Loading the model…"
    assert RunProgress().line() == "" and not RunProgress().running


def test_small_budget_switches_memory_measures_on(ctx, spec):
    manager = ctx.manager
    old_budget, old_reserve = manager.configured_budget, manager.reserve_bytes
    params = replace(BASE, width=256, height=256, batch_size=2, steps=1, seed=3)
    try:
        assert ctx.image.plan_memory(spec, params).measures == ()
        est = manager.estimate(spec)
        manager.set_budget(est.weights_bytes + 125 * 1024**2 + int(0.1 * GIB), int(0.1 * GIB))
        choice = ctx.image.plan_memory(spec, params)
        assert choice.measures == (ATTENTION_SLICING, VAE_TILING), choice
        assert choice.need <= choice.room and choice.accounted.batch == 1
        last = run(ctx, spec, params)
        assert last.report.measures == (ATTENTION_SLICING, VAE_TILING) and len(last.images) == 2
        assert "attention slicing, VAE tiling" in last.report.summary()
        with manager.acquire(spec) as lease:  # the shared pipeline is put back as it was
            pipe = lease.model
            assert not pipe.vae.use_tiling
            assert not any("Sliced" in type(p).__name__ for p in pipe.unet.attn_processors.values())
        manager.set_budget(est.weights_bytes + 30 * 1024**2 + int(0.1 * GIB), int(0.1 * GIB))
        with pytest.raises(Exception, match="even with attention slicing, VAE tiling"):
            ctx.image.plan_memory(spec, replace(params, batch_size=8, width=2048, height=2048))
    finally:
        manager.set_budget(old_budget, old_reserve)


def test_out_of_memory_degrades_then_says_so_and_the_engine_keeps_working(ctx, spec, monkeypatch):
    import torch
    from diffusers import StableDiffusionPipeline

    real_call = StableDiffusionPipeline.__call__
    calls = []

    def tight(self, *args, **kwargs):  # runs only tiled and one image at a time, like a card at its limit
        calls.append((self.vae.use_tiling, kwargs["num_images_per_prompt"]))
        if not self.vae.use_tiling or kwargs["num_images_per_prompt"] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", tight)
    last = run(ctx, spec, replace(BASE, seed=11, batch_size=2))
    assert last.report.recovered == (VAE_TILING, ONE_AT_A_TIME)
    assert [s.seed for s in last.images] == [11, 12]
    assert calls[:3] == [(False, 2), (False, 2), (True, 2)]
    assert "out of memory, recovered with: VAE tiling, one image at a time" in last.report.summary()

    def never(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", never)
    with pytest.raises(StudioOutOfMemory, match="Out of memory in sd-pipeline-seed0, even after"):
        run(ctx, spec, replace(BASE, seed=11, batch_size=2))
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", real_call)
    assert len(run(ctx, spec, replace(BASE, seed=11)).images) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 100}, "Width must be a multiple of 8, not 100"),
        ({"height": 4096}, "Height 4096 is beyond what sd-pipeline-seed0 supports"),
        ({"steps": 0}, "Steps must be 1 or more, not 0"),
        ({"prompt": "  "}, "the prompt is empty"),
        ({"sampler": "Heun"}, "Unknown sampler 'Heun'"),
        ({"init_image": "/no/such/file.png"}, "does not exist"),
    ],
)
def test_bad_input_gets_a_specific_message_and_images_stay(ctx, spec, change, message):
    before = ctx.image.gallery()
    with pytest.raises(InputError, match=message):
        run(ctx, spec, replace(BASE, **change))
    assert all(p.is_file() for p in before) and ctx.image.gallery() == before


def test_single_file_checkpoint_from_the_tiny_pipeline_loads_and_generates(ctx, spec, tiny_models, tmp_path):
    from studio.models.tiny import save_sd_single_file

    path = save_sd_single_file(tiny_models.sd_pipeline, tmp_path / "single", "tiny-sd.safetensors")
    single = ModelSpec("image", str(path), "file", "fp32", "cpu")
    a = run(ctx, single, replace(BASE, seed=99)).images[0]
    b = run(ctx, spec, replace(BASE, seed=99)).images[0]
    assert "Model: tiny-sd," in a.infotext
    assert np.array_equal(pixels(a.path), pixels(b.path))  # the same weights, read from the other layout


def test_a_file_that_is_not_a_diffusion_model_is_refused(ctx, tiny_models):
    lm_weights = Path(tiny_models.causal_lm) / "model.safetensors"
    wrong = ModelSpec("image", str(lm_weights), "file", "fp32", "cpu")
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint: it holds no diffusion UNet"):
        run(ctx, wrong, BASE)
    assert len(run(ctx, ModelSpec("image", str(tiny_models.sd_pipeline), "folder"), BASE).images) == 1
