"""The Fine-tune tab's base-model field: Hub ids (dots and all), folders, and what is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from studio.errors import InputError
from studio.models.specs import CATALOG
from studio.ui.finetune_tab import resolve_base


@pytest.mark.parametrize("hub_id", sorted({e.hub_id for e in CATALOG if e.kind == "chat"}))
def test_every_recommended_chat_model_is_a_hub_base(hub_id):
    source, source_type, label = resolve_base(SimpleNamespace(), hub_id)  # no file access for a Hub id
    assert (source, source_type) == (hub_id, "hub") and label


def test_a_folder_is_a_base_and_paths_that_are_not_are_refused(tmp_path):
    folder = tmp_path / "my.model-v1.5"
    folder.mkdir()
    assert resolve_base(SimpleNamespace(), str(folder)) == (str(folder.resolve()), "folder", "my.model-v1.5")
    for bad in ("/no/such/base", "./missing", "model.gguf", "weights.safetensors"):
        with pytest.raises(InputError, match="no such model folder"):
            resolve_base(SimpleNamespace(), bad)
    with pytest.raises(InputError, match="Pick a base model"):
        resolve_base(SimpleNamespace(), "  ")
