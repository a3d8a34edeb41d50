"""Sharing: adapter folders carry a model card and training facts; Hub upload needs HF_TOKEN."""

import json

import pytest

from _train_helpers import small_config, tokens
from nbutils.core.errors import UserError
from nbutils.train import hub
from nbutils.train import stage as train


class FakeHub:
    """Records what would be sent to the Hub (no network here)."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        from pathlib import Path

        self.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


def test_adapter_has_a_model_card_and_facts_and_pushes(tmp_path):
    out = tmp_path / "run"
    train.run(small_config(tokens(tmp_path), out, max_steps=2))
    final = out / "adapters" / "final"
    facts = json.loads((final / "training.json").read_text())
    assert facts["base_model"] == "tiny" and facts["step"] == 2 and facts["data"]["train_tracks"] == 4
    assert facts["hyperparameters"]["lora"]["r"] == 4 and facts["hyperparameters"]["effective_batch"] == 4
    card = (final / "README.md").read_text()
    assert card.startswith("---\nbase_model: tiny\nlibrary_name: peft\nlicense: cc-by-nc-4.0\n")
    assert "MusicGen weights are Meta's, released under CC-BY-NC-4.0" in card and "suite is MIT" in card
    assert "PeftModel.from_pretrained(base" in card and "r=4" in card and "4 tracks" in card

    fake = FakeHub()
    url = hub.push(final, "someone/my-lora", private=True, api=fake)
    assert url == "https://huggingface.co/someone/my-lora"
    created = {"private": True, "exist_ok": True, "repo_type": "model"}
    assert fake.calls[0] == ("create_repo", "someone/my-lora", created)
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(fake.calls[1][2])


def test_push_without_token_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="HF_TOKEN"):
        train.run(small_config(tokens(tmp_path), out, push_to_hub="someone/my-lora"))
    assert not out.exists(), "no training started"
    with pytest.raises(UserError, match="user/name"):
        hub.push(tmp_path, "no-slash", api=FakeHub())
