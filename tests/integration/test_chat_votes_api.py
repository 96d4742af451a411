"""Votes through the page's Gradio API, as a script casts them: two samples of one model side by side from /chat,
then /chat_vote_left; a vote with nothing to compare is an error naming why."""

from __future__ import annotations

import json

import pytest

from tests.ui.conftest import start_studio, stop_studio


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("votes-api-data"), "--device", "cpu", "--budget-gb", "2")
    yield s
    stop_studio(s)


def test_a_script_votes_on_two_samples_of_one_model(studio, tiny_models):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(studio.url, verbose=False)
    model = str(tiny_models.causal_lm)
    history, side, stats = client.predict(
        chatbot=[{"role": "user", "content": "Name a colour."}],
        model=model,
        temperature=1.0,
        top_k=5,
        seed=3,
        max_new=8,
        side_by_side=True,
        api_name="/chat",
    )
    assert "seed 3" in stats and "right, a second sample" in stats and "seed 4" in stats, stats
    text = [m["content"][0]["text"] for m in (history[-1], side[-1])]
    saved = client.predict(chatbot=history, side=side, model=model, api_name="/chat_vote_left")
    assert saved == "Saved: chat-votes.jsonl now has 1 pair."
    (row,) = [json.loads(line) for line in (studio.data_dir / "preferences" / "chat-votes.jsonl").open()]
    assert row["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert row["chosen"][0]["content"] == text[0] and row["rejected"][0]["content"] == text[1]
    assert row["meta"]["source"] == "two-samples" and row["meta"]["model"] == tiny_models.causal_lm.name
    with pytest.raises(AppError, match="Nothing to compare yet"):
        client.predict(chatbot=history, side=[], model=model, api_name="/chat_vote_right")
