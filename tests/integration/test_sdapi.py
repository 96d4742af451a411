"""AUTOMATIC1111's /sdapi/v1 on a real `python launch.py` process, called as A1111 tools call it (plain httpx,
and the `webuiapi` client), drawn by the tiny test pipeline at 64x64 and a few steps."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import pytest
from PIL import Image

from studio.engines.image_params import parse_infotext
from tests.ui.conftest import start_studio, stop_studio

KEY = "sk-sdapi-test-key"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("sdapi-data"), "--device", "cpu", "--budget-gb", "2")
    yield s
    stop_studio(s)


@pytest.fixture(scope="module")
def api(studio):
    with httpx.Client(base_url=studio.url + "sdapi/v1/", timeout=300) as client:
        # the studio has no image model loaded: tools pick one through the options, as webuiapi's util_set_model
        r = client.post("options", json={"sd_model_checkpoint": "tiny-sd"})
        assert r.status_code == 200, r.text
        yield client


def _decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def _png_b64(size=(64, 64), color=(200, 30, 30), fmt="PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def test_txt2img_returns_pngs_of_the_size_and_count_asked_and_the_seed_reproduces_them(api, studio):
    body = {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "steps": 3,
        "sampler_name": "Euler a",
        "cfg_scale": 7,
        "seed": -1,
        "width": 64,
        "height": 72,
        "batch_size": 2,
        "n_iter": 2,
        # what SillyTavern / Open WebUI send along, harmless as sent
        "styles": [],
        "restore_faces": False,
        "tiling": False,
        "enable_hr": False,
        "override_settings": {"CLIP_stop_at_last_layers": 1},
        "override_settings_restore_afterwards": True,
        "send_images": True,
        "save_images": False,
        "alwayson_scripts": {},
        "subseed": -1,
        "subseed_strength": 0,
        "denoising_strength": 0.7,
        "do_not_save_grid": True,
        "eta": 0,
    }
    r = api.post("txt2img", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["parameters"]["prompt"] == "a lighthouse at dusk"
    images = [_decode(b) for b in out["images"]]
    assert len(images) == 4 and all(img.format == "PNG" and img.size == (64, 72) for img in images)
    info = json.loads(out["info"])
    for key in ("prompt", "negative_prompt", "seed", "all_seeds", "width", "height", "sampler_name", "cfg_scale"):
        assert key in info
    assert info["steps"] == 3 and info["sd_model_name"] == "tiny-sd" and info["sampler_name"] == "Euler a"
    assert info["all_seeds"] == [info["seed"] + i for i in range(4)] and info["seed"] >= 0
    assert len(info["infotexts"]) == 4 and parse_infotext(info["infotexts"][0])["Seed"] == str(info["seed"])
    assert parse_infotext(images[0].info["parameters"])["Prompt"] == "a lighthouse at dusk"
    # written to the outputs, as from the page
    saved = {p.name for p in (studio.data_dir / "outputs" / "images").glob("*/*.png")}
    assert all(any(name.endswith(f"-{s}.png") for name in saved) for s in info["all_seeds"])
    # the seed the info reports draws the same images again (batched on the CPU, a batch of 1 may differ by a
    # rounding step in a pixel: the request is the same but for the seed)
    again = api.post("txt2img", json={**body, "seed": info["seed"]})
    assert again.status_code == 200, again.text
    assert [_decode(b).tobytes() for b in again.json()["images"]] == [img.tobytes() for img in images]
    assert json.loads(again.json()["info"])["all_seeds"] == info["all_seeds"]


def test_img2img_with_an_init_image_with_and_without_a_data_prefix(api):
    for init in (_png_b64(), "data:image/png;base64," + _png_b64(), _png_b64(fmt="JPEG")):
        body = {
            "init_images": [init],
            "prompt": "the same, at night",
            "steps": 4,
            "denoising_strength": 0.5,
            "sampler_name": "DPM++ 2M",
            "scheduler": "Karras",
            "seed": 5,
            "width": 64,
            "height": 64,
            "resize_mode": 0,
            "mask": None,
            "include_init_images": False,
        }
        r = api.post("img2img", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert len(out["images"]) == 1 and _decode(out["images"][0]).size == (64, 64)
        assert out["parameters"]["init_images"] is None  # as A1111: not echoed unless include_init_images
        info = json.loads(out["info"])
        assert info["denoising_strength"] == 0.5 and info["all_seeds"] == [5]
        assert info["sampler_name"] == "DPM++ 2M" and info["scheduler"] == "Karras"


def test_models_samplers_and_options(api, studio):
    models = api.get("sd-models").json()
    tiny = [m for m in models if m["title"] == "tiny-sd"]
    assert tiny and set(tiny[0]) >= {"title", "model_name", "hash", "sha256", "filename", "config"}
    samplers = api.get("samplers").json()
    names = {s["name"] for s in samplers}
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM"} <= names
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    assert api.get("options").json()["sd_model_checkpoint"] == "tiny-sd"
    assert api.get("upscalers").json() == [] and api.get("progress").json()["state"]["job_count"] == 0
    # the owner may name the pipeline's folder: it is loaded and becomes the model
    api.post("txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64}).raise_for_status()
    folder = studio.data_dir / "models" / "tiny-sd-pipeline"
    r = api.post("options", json={"sd_model_checkpoint": str(folder)})
    assert r.status_code == 200, r.text
    assert api.get("options").json()["sd_model_checkpoint"] == "tiny-sd"
    # a remote visitor (through a proxy) may not make the studio load a path
    r = api.post("options", json={"sd_model_checkpoint": "/etc"}, headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 403 and "sd_model_checkpoint" in r.json()["detail"]
    r = api.post("options", json={"sd_model_checkpoint": "no-such-model"}, headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 403
    r = api.post("options", json={"sd_model_checkpoint": "tiny-sd"}, headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 200, r.text  # picking a model the studio serves is fine
    r = api.post("options", json={"sd_model_checkpoint": "tiny-sd", "sd_hypernetwork": "x"})
    assert r.status_code == 400 and "sd_hypernetwork" in r.json()["detail"]
    # a per-request override
    r = api.post(
        "txt2img",
        json={
            "prompt": "x",
            "steps": 1,
            "width": 64,
            "height": 64,
            "override_settings": {"sd_model_checkpoint": "nope"},
        },
    )
    assert r.status_code == 400 and "override_settings.sd_model_checkpoint" in r.json()["detail"]


def test_progress_while_drawing_and_interrupt_stops_early(api):
    body = {"prompt": "slow", "steps": 150, "width": 128, "height": 128, "n_iter": 3, "seed": 900}
    result: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        result["response"] = httpx.post(str(api.base_url) + "txt2img", json=body, timeout=300)
        result["seconds"] = time.monotonic() - t0

    worker = threading.Thread(target=run)
    worker.start()
    seen = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        p = api.get("progress").json()
        if p["state"]["sampling_step"] >= 2:
            seen = p
            break
        time.sleep(0.1)
    assert seen is not None, "no progress reported"
    assert seen["state"]["job_count"] == 3 and seen["state"]["sampling_steps"] == 150
    assert 0 < seen["progress"] < 1 and seen["current_image"] is None and "textinfo" in seen
    interrupted_at = time.monotonic()
    assert api.post("interrupt").status_code == 200
    worker.join(120)
    assert not worker.is_alive()
    r = result["response"]
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["images"]) < 3  # the batch being drawn is not finished, the later ones are not started
    assert json.loads(out["info"])["interrupted"] is True
    # it ended after the current step: far sooner than the 450 steps left would take
    per_step = (interrupted_at - (time.monotonic() - result["seconds"])) / max(1, seen["state"]["sampling_step"])
    assert time.monotonic() - interrupted_at < max(15.0, 40 * per_step)
    assert api.get("progress").json()["state"]["job_count"] == 0


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"prompt": "x", "sampler_name": "Heun"}, 400, "sampler_name"),
        ({"prompt": "x", "width": 100, "height": 64}, 400, "width"),
        ({"prompt": "x", "width": 64, "height": 100000}, 400, "height"),
        ({"prompt": "x", "steps": "20"}, 422, "steps"),
        ({"prompt": "x", "steps": 0}, 400, "steps"),
        ({"prompt": "x", "cfg_scale": "high"}, 422, "cfg_scale"),
        ({"prompt": "x", "batch_size": 99}, 400, "batch_size"),
        ({"prompt": "x", "enable_hr": True}, 400, "enable_hr"),
        ({"prompt": "x", "alwayson_scripts": {"controlnet": {"args": []}}}, 400, "alwayson_scripts"),
        ({"prompt": "x", "override_settings": {"sd_vae": "my.vae.pt"}}, 400, "override_settings.sd_vae"),
    ],
)
def test_bad_txt2img_inputs_name_the_field(api, body, status, named):
    r = api.post("txt2img", json={"steps": 1, **body})
    assert r.status_code == status, r.text
    assert named in r.json()["detail"]


def test_bad_init_images_name_the_field_and_the_studio_keeps_serving(api):
    base = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
    for init, named in (
        ("not base64 at all!!", "init_images[0]"),
        (base64.b64encode(b"plain text, not an image").decode(), "init_images[0]"),
        (12, "init_images[0]"),
    ):
        r = api.post("img2img", json={**base, "init_images": [init]})
        assert r.status_code in (400, 422) and named in r.json()["detail"], r.text
    r = api.post("img2img", json=base)
    assert r.status_code == 422 and "init_images" in r.json()["detail"]
    r = api.post("img2img", json={**base, "init_images": [_png_b64()], "mask": _png_b64()})
    assert r.status_code == 400 and "mask" in r.json()["detail"]
    r = api.post("txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "detail" in r.json()
    r = api.post("txt2img", json={**base, "seed": 11})
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_webuiapi_client(api, studio):
    webuiapi = pytest.importorskip("webuiapi")
    port = int(studio.url.rstrip("/").rsplit(":", 1)[1])
    client = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=2)
    client.util_set_model("tiny-sd")
    assert "tiny-sd" in client.util_get_model_names()
    result = client.txt2img(prompt="a cat", width=64, height=64, seed=42, cfg_scale=7)
    assert result.image.size == (64, 64) and result.info["all_seeds"] == [42]
    result = client.img2img(images=[result.image], prompt="a dog", width=64, height=64, denoising_strength=0.6)
    assert result.image.size == (64, 64)


@pytest.fixture(scope="module")
def keyed_studio(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("sdapi-key"), "--device", "cpu", "--budget-gb", "2", "--api-key", KEY)
    yield s
    stop_studio(s)


def test_the_api_key_is_required_when_the_studio_has_one(keyed_studio):
    url = keyed_studio.url + "sdapi/v1/"
    r = httpx.get(url + "sd-models", timeout=30)
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    r = httpx.post(url + "txt2img", json={"prompt": "x"}, headers={"Authorization": "Bearer wrong-key-1"}, timeout=30)
    assert r.status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(
        url + "txt2img",
        json={
            "prompt": "x",
            "steps": 1,
            "width": 64,
            "height": 64,
            "override_settings": {"sd_model_checkpoint": "tiny-sd"},
        },
        headers=auth,
        timeout=300,
    )
    assert r.status_code == 200 and len(r.json()["images"]) == 1, r.text
