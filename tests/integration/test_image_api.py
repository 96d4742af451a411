"""/v1/images/generations on a real `python launch.py` process, through the official `openai` client, and the
Image tab's own Gradio endpoint."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from openai import OpenAI
from PIL import Image

from studio.engines.image import parse_infotext
from tests.ui.conftest import start_studio, stop_studio


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("image-api-data"), "--device", "cpu", "--budget-gb", "2")
    yield s
    stop_studio(s)


@pytest.fixture(scope="module")
def client(studio) -> OpenAI:
    return OpenAI(base_url=studio.url + "v1", api_key="not-needed", max_retries=0, timeout=180)


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


def test_gradio_endpoint_draws_into_the_gallery(studio):
    from gradio_client import Client

    ui = Client(studio.url, verbose=False)
    gallery, status = ui.predict(
        "tiny-sd", "fp32", "a red fox", "", "Euler a", 3, 7, 64, 64, 77, 1, 1, None, 0.75, api_name="/image_generate"
    )
    assert "seed 77" in status and "1 image" in status
    assert gallery[0]["caption"].endswith("seed 77") and gallery[0]["image"].endswith("-77.png")
    with Image.open(gallery[0]["image"]) as img:  # the copy Gradio served keeps the parameters chunk
        assert parse_infotext(img.info["parameters"])["Seed"] == "77"


def test_restore_endpoint_reads_the_settings_back_from_a_png(studio):
    from gradio_client import Client, handle_file

    png = sorted((studio.data_dir / "outputs" / "images").glob("*/*-77.png"))[-1]
    ui = Client(studio.url, verbose=False)
    current = ("", "", "Euler", 20, 7, 512, 512, -1, 0.75)
    out = ui.predict(handle_file(str(png)), "tiny-sd", "fp32", *current, api_name="/image_restore")
    prompt, negative, sampler, steps, cfg, width, height, seed, strength, _model, note = out
    assert (prompt, sampler, steps, cfg, width, height, seed) == ("a red fox", "Euler a", 3, 7, 64, 64, 77)
    assert "Restored the settings" in note and "seed 77" in note
