"""lm-evaluation-harness's `local-completions` model against a real `python launch.py`: a tiny local
multiple-choice (loglikelihood) task scored through POST /v1/completions (token-id prompts, echo, logprobs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.ui.conftest import studio_with

pytest.importorskip("lm_eval")

TINY = "causal-lm-seed0"  # the name of tiny_models.causal_lm (its folder's name)
TASK = "studio_tiny_mc"
DOCS = [
    {"question": "The sky on a clear day is", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "Two plus two makes", "choices": ["three", "four"], "answer": 1},
    {"question": "Ice is made of frozen", "choices": ["sand", "fire", "water"], "answer": 2},
    {"question": "A cat says", "choices": ["meow", "moo"], "answer": 0},
]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

# run in a child process so that the offline switches hold from the first import of datasets and huggingface_hub
EVALUATE = (
    textwrap.dedent(
        """
    import json, sys
    import lm_eval
    from lm_eval.tasks import TaskManager

    base_url, tokenizer, include, out = sys.argv[1:5]
    args = {
        "model": "MODEL",
        "base_url": base_url,
        "tokenizer_backend": "huggingface",
        "tokenizer": tokenizer,
        "tokenized_requests": True,
        "num_concurrent": 1,
        "max_retries": 1,
        "batch_size": 2,
        "timeout": 120,
    }
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=",".join(f"{k}={v}" for k, v in args.items()),
        tasks=["TASK"],
        task_manager=TaskManager(include_path=include),
        log_samples=False,
    )
    with open(out, "w") as f:
        json.dump({"results": results["results"], "n": results["n-samples"]}, f, default=str)
    """
    )
    .replace("MODEL", TINY)
    .replace("TASK", TASK)
)


def write_task(folder: Path) -> Path:
    """A multiple-choice task YAML over a local JSONL file (no download: the `json` builder reads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    (folder / f"{TASK}.yaml").write_text(
        textwrap.dedent(
            f"""\
            task: {TASK}
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {json.dumps(str(data))}
            test_split: test
            output_type: multiple_choice
            doc_to_text: "{{{{question}}}}"
            doc_to_choice: choices
            doc_to_target: answer
            metric_list:
              - metric: acc
                aggregation: mean
                higher_is_better: true
            """
        ),
        encoding="utf-8",
    )
    return folder


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_models):
    with studio_with(tmp_path_factory.mktemp("lm-eval-data"), ("chat", tiny_models.causal_lm)) as s:
        yield s


def test_local_completions_scores_a_multiple_choice_task(studio, tiny_models, tmp_path):
    include = write_task(tmp_path / "tasks")
    out = tmp_path / "results.json"
    env = dict(
        os.environ,
        **OFFLINE,
        HF_HOME=str(tmp_path / "hf"),  # the datasets cache of the JSONL file, not the user's
        OPENAI_API_KEY="not-needed",
        TOKENIZERS_PARALLELISM="false",
    )
    before = len(re.findall(rf"OpenAI API: {TINY}: ", studio.log.read_text()))
    run = subprocess.run(
        [sys.executable, "-c", EVALUATE, studio.url + "v1/completions", str(tiny_models.causal_lm), str(include),
         str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(out.read_text())
    acc = results["results"][TASK]["acc,none"]
    assert 0.0 <= acc <= 1.0 and results["n"][TASK]["effective"] == len(DOCS)
    # one scored prompt per (document, choice), each answered by the studio's tiny LM
    scored = len(re.findall(rf"OpenAI API: {TINY}: ", studio.log.read_text())) - before
    assert scored >= sum(len(d["choices"]) for d in DOCS), studio.log.read_text()[-3000:]
