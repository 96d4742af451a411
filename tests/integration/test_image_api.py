"""/v1/images/generations on a real `python launch.py` process, through the official `openai` client, and the
Image tab's own Gradio endpoint."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image, PngImagePlugin

from studio.engines.image_params import parse_infotext
from tests.ui.conftest import openai_client, start_studio, stop_studio


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("image-api-data"), "--device", "cpu", "--budget-gb", "2")
    yield s
    stop_studio(s)


@pytest.fixture(scope="module")
def client(studio) -> OpenAI:
    return openai_client(studio, timeout=180)


def test_openai_client_gets_decodable_pngs(client, studio):
    result = client.images.generate(
        model="tiny-sd", prompt="a lighthouse at dusk", n=2, size="64x64", response_format="b64_json"
    )
    assert len(result.data) == 2 and result.created > 0
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in result.data]
    for img in images:
        img.load()
        assert img.format == "PNG" and img.size == (64, 64)
    first, second = (parse_infotext(img.info["parameters"]) for img in images)
    assert first["Prompt"] == "a lighthouse at dusk" and first["Model"] == "tiny-sd"
    assert int(second["Seed"]) == int(first["Seed"]) + 1
    saved = sorted((studio.data_dir / "outputs" / "images").glob("*/*.png"))
    assert len(saved) >= 2  # written to the outputs too, as from the page


def test_openai_errors_have_openai_shape(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny-sd", prompt="x", size="100x64")
    assert "Width must be a multiple of 8, not 100" in err.value.message
    with pytest.raises(openai.NotFoundError) as err:
        client.images.generate(model="no-such-model", prompt="x")
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny-sd", prompt="x", response_format="url")
    assert err.value.body["param"] == "response_format"


def test_a_client_that_leaves_stops_the_run_and_frees_the_gpu_for_the_next_request(studio):
    """Eight 128x128 images of 150 steps take minutes here; the client gives up after 3 s. The run ends after its
    current step (the batch is one pipeline call: its images are kept only as partly denoised ones, named
    -partial) and the next request is served at once."""
    folder = studio.data_dir / "outputs" / "images"
    quick = {"model": "tiny-sd", "prompt": "right after", "size": "64x64", "steps": 1, "seed": 4100}
    httpx.post(studio.url + "v1/images/generations", json=quick, timeout=180).raise_for_status()  # built, loaded
    body = {"model": "tiny-sd", "prompt": "abandoned", "n": 8, "size": "128x128", "steps": 150, "seed": 4000}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(studio.url + "v1/images/generations", json=body, timeout=3)
    t0 = time.monotonic()
    r = httpx.post(studio.url + "v1/images/generations", json=quick, timeout=30)
    assert r.status_code == 200 and len(r.json()["data"]) == 1 and time.monotonic() - t0 < 30
    # the GPU lane is first come, first served: the abandoned run had ended, and written what it kept
    abandoned = [p for p in folder.glob("*/*.png") if 4000 <= int(re.match(r"\d+-(\d+)", p.name).group(1)) < 4008]
    finished = [p for p in abandoned if not p.stem.endswith("-partial")]
    assert len(finished) < 8, abandoned  # the partly denoised ones are kept, marked as such (as Stop keeps them)
    stopped = r"images API: .*stopped after \d+ of 8 .*\(the client left\)"
    assert _log_lines(studio, stopped), studio.log.read_text()[-3000:]


def _log_lines(studio, pattern: str, timeout: float = 15.0) -> list[str]:
    """Lines of the studio's log matching `pattern`, waiting up to `timeout` for at least one."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in studio.log.read_text().splitlines() if re.search(pattern, line)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def _draw_seed_77(studio):
    from gradio_client import Client

    ui = Client(studio.url, verbose=False)
    return ui.predict(
        "tiny-sd", "fp32", "a red fox", "", "Euler a", 3, 7, 64, 64, 77, 1, 1, None, 0.75, api_name="/image_generate"
    )


def _png_77(studio):
    """The seed-77 image the gallery test draws; drawn here when that test ran on another xdist worker."""
    pngs = sorted((studio.data_dir / "outputs" / "images").glob("*/*-77.png"))
    if not pngs:
        _draw_seed_77(studio)
        pngs = sorted((studio.data_dir / "outputs" / "images").glob("*/*-77.png"))
    return pngs[-1]


def test_gradio_endpoint_draws_into_the_gallery(studio):
    gallery, status = _draw_seed_77(studio)
    assert "seed 77" in status and "1 image" in status
    assert gallery[0]["caption"].endswith("seed 77") and gallery[0]["image"].endswith("-77.png")
    with Image.open(gallery[0]["image"]) as img:  # the copy Gradio served keeps the parameters chunk
        assert parse_infotext(img.info["parameters"])["Seed"] == "77"


def test_restore_endpoint_reads_the_settings_back_from_a_png(studio):
    from gradio_client import Client, handle_file

    png = _png_77(studio)
    ui = Client(studio.url, verbose=False)
    current = ("", "", "Euler", 20, 7, 512, 512, -1, 0.75)
    out = ui.predict(handle_file(str(png)), "tiny-sd", "fp32", *current, api_name="/image_restore")
    prompt, negative, sampler, steps, cfg, width, height, seed, strength, _model, note = out
    assert (prompt, sampler, steps, cfg, width, height, seed) == ("a red fox", "Euler a", 3, 7, 64, 64, 77)
    assert "Restored the settings" in note and "seed 77" in note


# ----- the Image tab's gaps: stale page lists, restoring local models, LCM, download progress ----------------------


def _queued(studio, api_name: str, data: list) -> list[dict]:
    """Every message of one queued call as the page gets them (queue/join, then queue/data's stream), progress too."""
    config = httpx.get(studio.url + "config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    session = uuid.uuid4().hex
    messages: list[dict] = []
    with httpx.Client(base_url=studio.url, timeout=180) as client:
        body = {"data": data, "fn_index": fn_index, "session_hash": session}
        client.post("gradio_api/queue/join", json=body).raise_for_status()
        with client.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    messages.append(json.loads(line[5:]))
                    if messages[-1].get("msg") in ("process_completed", "close_stream"):
                        break
    return messages


def _unqueued(studio, api_name: str, data: list, event_data: dict | None = None) -> list:
    """One unqueued event as the page sends it (/run/NAME, with the event's data such as a gallery selection)."""
    body = {"data": data, "event_data": event_data, "session_hash": uuid.uuid4().hex}
    r = httpx.post(f"{studio.url}gradio_api/run/{api_name}", json=body, timeout=60)
    r.raise_for_status()
    return r.json()["data"]


def _draw_v1(studio, seed: int) -> None:
    body = {"model": "tiny-sd", "prompt": f"seed {seed}", "size": "64x64", "seed": seed, "steps": 2}
    httpx.post(studio.url + "v1/images/generations", json=body, timeout=180).raise_for_status()


def _png(path: Path, parameters: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_a_selected_image_shows_its_own_settings_even_when_the_page_list_is_stale(studio):
    _draw_v1(studio, 301)
    page_list = _unqueued(studio, "image_gallery", [])[0]  # what the page shows: Gradio's copies, with captions
    assert page_list[0]["image"]["orig_name"].endswith("-301.png")
    _draw_v1(studio, 302)  # drawn meanwhile (another page, /v1): a fresh listing now starts with it
    params, _path = _unqueued(studio, "image_select", [], {"index": 0, "value": page_list[0]})
    assert "Seed: 301" in params and "seed 301" in params, params
    # the page names the file; only files in the outputs folder are read, whatever it sends (Gradio itself
    # refuses a "path" outside its cache)
    outside = _png(studio.data_dir / "00001-303.png", "x\nSteps: 2, Sampler: Euler a, Seed: 303, Size: 64x64")
    for value in (
        {"image": {"orig_name": outside.name}, "caption": "x"},
        {"image": {"orig_name": outside.name}, "caption": "../.. #00001"},  # the caption names its folder
        {"image": {"orig_name": outside.name}, "caption": f"{studio.data_dir} #00001"},
        {"image": {"orig_name": "hostname"}, "caption": "/etc #1"},
        "not a gallery item",
    ):
        assert _unqueued(studio, "image_select", [], {"index": 0, "value": value})[0] == "", value


def test_restore_switches_to_the_folder_or_file_model_a_png_names(studio):
    from gradio_client import Client, handle_file

    models = studio.data_dir / "models"
    folder = models / "my-sd"  # picker values are full paths; the PNG says "my-sd" / "v1-5-pruned"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (models / "v1-5-pruned.safetensors").write_bytes(b"")
    ui = Client(studio.url, verbose=False)
    current = ("", "", "Euler a", 3, 7, 64, 64, -1, 0.75)
    for model, expected in (("my-sd", folder), ("v1-5-pruned", models / "v1-5-pruned.safetensors")):
        text = f"a fox\nSteps: 9, Sampler: Euler, CFG scale: 5, Seed: 9, Size: 512x512, Model: {model}"
        png = _png(studio.data_dir / f"{model}.png", text)
        *values, chosen, note = ui.predict(
            handle_file(str(png)), "tiny-sd", "fp32", *current, api_name="/image_restore"
        )
        assert isinstance(chosen, str) and Path(chosen).resolve() == expected.resolve(), (chosen, note)
        assert f"Switched the model to {model}" in note and "not in the" not in note, note
        assert values[:4] == ["a fox", "", "Euler", 9]
    png = _png(studio.data_dir / "elsewhere.png", "x\nSteps: 9, Seed: 9, Size: 512x512, Model: not-here-v2")
    *_, chosen, note = ui.predict(handle_file(str(png)), "tiny-sd", "fp32", *current, api_name="/image_restore")
    assert chosen == {"__type__": "update"}  # the picker is left as it is
    assert "drawn with not-here-v2, which is not in the model list: the model stays tiny-sd" in note, note


def test_the_lcm_sampler_is_refused_for_models_it_does_not_apply_to(studio):
    from gradio_client import Client

    lcm = studio.data_dir / "models" / "my-lcm-model"
    lcm.mkdir(parents=True, exist_ok=True)
    (lcm / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    ui = Client(studio.url, verbose=False)
    settings = ["a fox", "", "LCM", 4, 1, 64, 64, 1, 1, 1, None, 0.75]
    ui.predict(str(lcm), "fp32", *settings, api_name="/image_check")  # an LCM model: fine
    with pytest.raises(Exception, match="The LCM sampler works only with few-step models") as err:
        ui.predict("tiny-sd", "fp32", *settings, api_name="/image_check")
    assert "Test pipeline" in str(err.value)
    body = {"model": "tiny-sd", "prompt": "a fox", "size": "64x64", "sampler": "LCM", "steps": 2}
    r = httpx.post(studio.url + "v1/images/generations", json=body, timeout=60)
    assert r.status_code == 400 and "LCM sampler works only with few-step models" in r.json()["error"]["message"]


def test_the_first_generate_relays_the_model_loading_and_no_per_step_bar(studio):
    # fp16 is another cache entry than the fp32 the tests above drew with (on the CPU it loads as fp32): not loaded
    data = ["tiny-sd", "fp16", "a fox", "", "Euler a", 3, 7, 64, 64, 5, 1, 1, None, 0.75]
    messages = _queued(studio, "image_generate", data)
    assert messages[-1].get("success"), messages[-1]
    bars = [m["progress_data"] for m in messages if m.get("msg") == "progress"]
    assert any("Loading pipeline components" in (unit.get("desc") or "") for bar in bars for unit in bar), bars
    # the steps are the page's one progress line (image_tab.poll), not a bar beside it: the pipeline's own tqdm
    # bar is kept out, and no "13/180 steps | Denoising - 7.2%" bar is sent
    assert not [u for bar in bars for u in bar if u.get("desc") in (None, "Denoising")], bars


def test_a_page_load_lists_what_was_drawn_and_added_since_the_studio_started(studio):
    _draw_v1(studio, 304)
    folder = studio.data_dir / "models" / "added-later"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    gallery, picker, line, _runs = _unqueued(studio, "image_page", [])
    assert line == ""  # no run is being drawn
    assert gallery[0]["caption"].endswith("seed 304")
    assert ["added-later (folder)", str(folder)] in picker["choices"], picker
