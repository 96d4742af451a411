"""The AUTOMATIC1111 parameters text, input checks, sampler names, model defaults and memory stages (no torch)."""

from __future__ import annotations

import struct
import zlib

import pytest

from studio.api.images import parse_request
from studio.api.openai import ApiError
from studio.engines.image import defaults_for, lcm_applies
from studio.engines.image_memory import ATTENTION_SLICING, CPU_OFFLOAD, VAE_TILING, measure_stages, need_with
from studio.engines.image_params import (
    SAMPLER_NAMES,
    ImageParams,
    infotext,
    params_from_infotext,
    parse_infotext,
    read_png_parameters,
)
from studio.errors import InputError
from studio.models.specs import ModelSpec

# As AUTOMATIC1111 1.10 writes it (hash left out).
A1111 = (
    "masterpiece, a castle on a hill, (sunset:1.2)\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3320405843, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.55, Version: v1.10.1"
)


def test_infotext_is_the_a1111_format():
    p = ImageParams(prompt="a cat", negative_prompt="dog", sampler="Euler a", steps=20, cfg_scale=7, seed=123)
    assert infotext(p, 123, "sd-turbo") == (
        "a cat\nNegative prompt: dog\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 123, Size: 512x512, "
        "Model: sd-turbo, Version: ML Studio"
    )
    no_negative = infotext(ImageParams(prompt="a cat"), 1, "m")
    assert "Negative prompt" not in no_negative and no_negative.startswith("a cat\nSteps: 25")


def test_parse_reads_an_a1111_file():
    fields = parse_infotext(A1111)
    assert fields["Prompt"] == "masterpiece, a castle on a hill, (sunset:1.2)"
    assert fields["Negative prompt"] == "lowres, bad anatomy"
    assert fields["Steps"] == "28" and fields["Size-1"] == "512" and fields["Size-2"] == "768"
    restored = params_from_infotext(A1111)
    p = restored.params
    assert (p.sampler, p.steps, p.cfg_scale, p.seed, p.width, p.height, p.strength) == (
        "DPM++ 2M Karras",
        28,
        6.5,
        3320405843,
        512,
        768,
        0.55,
    )
    assert restored.model == "v1-5-pruned-emaonly"


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_round_trips(sampler):
    p = ImageParams(
        prompt="line one\nline two, with: punctuation",
        negative_prompt="bad\nworse",
        sampler=sampler,
        steps=9,
        cfg_scale=4.5,
        width=640,
        height=384,
        seed=42,
        init_image="x.png",
        strength=0.3,
    )
    text = infotext(p, 42, 'a model, named "oddly": v2')
    restored = params_from_infotext(text, ImageParams(init_image="x.png"))
    assert restored.params == p and restored.model == 'a model, named "oddly": v2' and not restored.notes


def test_old_and_unknown_sampler_names():
    old = "x\nSteps: 5, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 64x64"
    assert params_from_infotext(old).params.sampler == "DPM++ 2M Karras"
    uniform = "x\nSteps: 5, Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale: 7, Seed: 1, Size: 64x64"
    assert params_from_infotext(uniform).params.sampler == "DPM++ 2M"
    unknown = params_from_infotext("x\nSteps: 5, Sampler: DPM++ SDE, CFG scale: 7, Seed: 1, Size: 64x64")
    assert unknown.params.sampler == ImageParams().sampler and "DPM++ SDE is not available" in unknown.notes[0]


@pytest.mark.parametrize(
    "field",
    ["Seed: 1e999", "Steps: " + "9" * 400, "Seed: nan", "CFG scale: inf", "Size: 64x" + "9" * 30, "Seed: 2.5"],
    ids=["seed-1e999", "steps-400-digits", "seed-nan", "cfg-inf", "height-30-digits", "seed-2.5"],
)
def test_a_number_no_setting_can_hold_is_refused_by_name(field):
    key = field.split(":")[0]
    with pytest.raises(InputError, match=f"x.png says {key}: .*not a number the studio can use"):
        params_from_infotext(f"x\nSteps: 5, Sampler: Euler a, {field}", where="x.png")


def test_text_that_is_no_number_keeps_the_setting():
    assert params_from_infotext("x\nSteps: many, Sampler: Euler a, Seed: 3", ImageParams(steps=9)).params.steps == 9


def png(*chunks: bytes, width: int = 8, height: int = 8) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    text = b"".join(chunk(kind, data) for kind, data in chunks)
    return b"\x89PNG\r\n\x1a\n" + ihdr + text + chunk(b"IDAT", zlib.compress(b"\0" * 25)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "chunk",
    [
        (b"tEXt", b"parameters\0a cat\nSteps: 5"),
        (b"zTXt", b"parameters\0\0" + zlib.compress(b"a cat\nSteps: 5")),
        (b"iTXt", b"parameters\0\0\0en\0\0a cat\nSteps: 5"),
        (b"iTXt", b"parameters\0\1\0\0\0" + zlib.compress(b"a cat\nSteps: 5")),
    ],
    ids=["tEXt", "zTXt", "iTXt", "iTXt-compressed"],
)
def test_the_parameters_chunk_is_read_in_each_text_form(tmp_path, chunk):
    path = tmp_path / "x.png"
    path.write_bytes(png((b"tEXt", b"Software\0other"), chunk))
    assert read_png_parameters(path) == "a cat\nSteps: 5"


def test_pixels_are_never_decoded_so_a_huge_header_still_restores(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png((b"tEXt", b"parameters\0a cat"), width=100_000, height=100_000))
    assert read_png_parameters(path) == "a cat"


def test_a_parameters_text_past_the_limit_is_refused_unread(tmp_path):
    squeeze = zlib.compressobj(9)
    path = tmp_path / "ztxt.png"
    path.write_bytes(png((b"zTXt", b"parameters\0\0" + squeeze.compress(b"a" * (200 << 20)) + squeeze.flush())))
    with pytest.raises(InputError, match="ztxt.png: its parameters text is larger than the 1 MB"):
        read_png_parameters(path)
    path.write_bytes(png((b"zTXt", b"parameters\0\0not zlib")))
    with pytest.raises(InputError, match="chunk is damaged"):
        read_png_parameters(path)
    path.write_bytes(b"GIF89a")
    with pytest.raises(InputError, match="ztxt.png: not an image file"):
        read_png_parameters(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 513}, "Width must be a multiple of 8, not 513. Try 512 or 520."),
        ({"height": 4096}, "Height 4096 is beyond what this model supports: use 64 to 2048 px."),
        ({"width": 32}, "Width 32 is beyond"),
        ({"steps": 0}, "Steps must be 1 or more, not 0."),
        ({"steps": -3}, "Steps must be 1 or more"),
        ({"prompt": ""}, "the prompt is empty"),
        ({"cfg_scale": 31.0}, "CFG scale must be between 0 and 30"),
        ({"seed": -2}, "Seed must be -1 (random)"),
        ({"batch_size": 9}, "Batch size must be between 1 and 8"),
        ({"init_image": "a.png", "strength": 0.01, "steps": 10}, "leave no step to run"),
    ],
)
def test_check_inputs(change, message):
    params = ImageParams(**{"prompt": "a cat", **change})
    with pytest.raises(InputError) as err:
        params.check_inputs()
    assert message in str(err.value)


def test_an_empty_prompt_is_fine_with_an_init_image():
    ImageParams(prompt="", init_image="a.png").check_inputs()


def test_few_step_models_get_few_step_defaults():
    turbo = defaults_for(ModelSpec("image", "stabilityai/sdxl-turbo", "hub"))
    assert (turbo.steps, turbo.cfg_scale, turbo.width, turbo.sampler) == (1, 0.0, 512, "Euler a")
    assert defaults_for(ModelSpec("image", "stabilityai/sd-turbo", "hub")).steps <= 4
    xl = defaults_for(ModelSpec("image", "stabilityai/stable-diffusion-xl-base-1.0", "hub"))
    assert xl.width == 1024 and xl.steps >= 20 and xl.cfg_scale > 1
    sd15 = defaults_for(ModelSpec("image", "stable-diffusion-v1-5/stable-diffusion-v1-5", "hub"))
    assert (sd15.width, sd15.steps, sd15.cfg_scale) == (512, 25, 7.0)


def test_memory_stages_shrink_the_need_and_offload_is_cuda_only():
    assert CPU_OFFLOAD not in {m for stage in measure_stages("cpu") for m in stage}
    stages = measure_stages("cuda")
    assert stages[-1] == (ATTENTION_SLICING, VAE_TILING, CPU_OFFLOAD)
    needs = [need_with(s, 2 * 1024**3, 300 * 1024**2, 3000.0, 1024 * 1024, 2) for s in stages]
    assert needs == sorted(needs, reverse=True) and len(set(needs)) == 4


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny-sd"}, "prompt"),
        ({"prompt": "x", "size": "512"}, "size"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "steps": "ten"}, "steps"),
    ],
)
def test_api_request_errors_name_the_field(body, param):
    with pytest.raises(ApiError) as err:
        parse_request(body)
    assert err.value.status == 400 and err.value.param == param


def test_api_request_fields():
    model, given = parse_request({"prompt": " a fox ", "n": 2, "size": "64x72", "model": "tiny-sd", "seed": 5})
    assert model == "tiny-sd"
    assert given == {"prompt": "a fox", "batch_size": 2, "width": 64, "height": 72, "seed": 5}


def test_the_lcm_sampler_only_for_few_step_models():
    assert lcm_applies(ModelSpec("image", "stabilityai/sd-turbo", "hub"))
    assert lcm_applies(ModelSpec("image", "/models/lcm-dreamshaper-v7", "folder"))
    assert not lcm_applies(ModelSpec("image", "stable-diffusion-v1-5/stable-diffusion-v1-5", "hub"))
    params = ImageParams(prompt="a cat", sampler="LCM", steps=4, cfg_scale=1)
    params.check_inputs(model="LCM Dreamshaper", few_step=True)
    with pytest.raises(InputError) as err:
        params.check_inputs(model="SD 1.5", few_step=False)
    assert "The LCM sampler works only with few-step models (LCM, LCM-LoRA, Turbo" in str(err.value)
    assert "SD 1.5 is not one" in str(err.value)
