"""WandB: offline files hold what training logged, a resumed run continues the same WandB run,
disabled mode does nothing, secrets never reach WandB's files."""


import pytest
import torch

from _train_helpers import finished_records, offline_runs, small_config, tokens, wandb_history, wandb_records
from nbutils.core import faults, tracking
from nbutils.core.errors import UserError
from nbutils.train import stage as train

SECRET = "hf_SuperSecretTokenValue1234567890"



def test_offline_run_has_the_metrics_samples_artifacts_and_resumes_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("MY_SERVICE_PASSWORD", SECRET)
    data, out = tokens(tmp_path), tmp_path / "run"
    cfg = small_config(data, out, wandb="offline", max_steps=4, sample_every=2, sample_seconds=0.2)
    monkeypatch.setenv(faults.ENV, "interrupt:3")
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg)
    run_id = torch.load(out / "latest.pt", weights_only=True)["wandb_run_id"]
    assert run_id
    monkeypatch.delenv(faults.ENV)
    summary = train.run(cfg)
    assert summary["wandb_run_id"] == run_id, "resuming continues the same WandB run"
    runs = offline_runs(out)
    # each session's folder holds the same run's log (the folder name may get a "-1" suffix when
    # both sessions start within one second)
    assert len(runs) == 2 and all((r / f"run-{run_id}.wandb").is_file() for r in runs)

    rows = []
    for run in runs:
        finished_records(run)
        rows += wandb_history(run)
    keys = set().union(*rows)
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/step_time", "val/loss",
                *(f"train/loss_cb{k}" for k in range(4)), *(f"val/loss_cb{k}" for k in range(4))}
    assert expected <= keys, expected - keys
    assert {"samples/base/0/path", "samples/lora/0/path"} <= keys  # step 0: base model; later: LoRA
    logged = {row["_step"]: row["train/loss"] for row in rows if "train/loss" in row}
    written = {r["step"]: r["train/loss"] for r in train.read_metrics(out) if "train/loss" in r}
    assert logged == written and sorted(logged) == [1, 2, 3, 4]

    records = finished_records(runs[-1])
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert sorted(a.type for a in artifacts) == ["lora-adapter", "lora-adapter"]
    config = {item.key for r in wandb_records(runs[0]) if r.WhichOneof("record_type") == "run"
              for item in r.run.config.update}
    assert {"lr", "lora_r", "model", "effective_batch"} <= config

    leaked = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == [], f"secret written to {leaked}"


def test_disabled_mode_starts_nothing(tmp_path):
    out = tmp_path / "run"
    summary = train.run(small_config(tokens(tmp_path), out, wandb="disabled", max_steps=2))
    assert summary["wandb_run_id"] is None and not (out / "wandb").exists()
    assert not tracking.active()
    tracking.log({"x": 1}, step=1)  # no-ops without a run
    tracking.log_audio("a", [0.0], 32000, "c")
    tracking.finish()


def test_auto_mode_goes_online_only_with_a_key_and_respects_wandb_mode(tmp_path, monkeypatch):
    """What the README and notebooks promise: without a key, offline into the run folder; WANDB_MODE wins."""
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert tracking.resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.resolve_mode("auto") == "online"
    for env, mode in (("disabled", "disabled"), ("offline", "offline"), ("dryrun", "offline"), ("ONLINE", "online")):
        monkeypatch.setenv("WANDB_MODE", env)
        assert tracking.resolve_mode("auto") == mode, env
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_mode("offline") == "offline"  # a mode set on purpose is used as given
    with pytest.raises(Exception, match="Unknown wandb mode"):
        tracking.resolve_mode("sometimes")


def test_scrub_hides_secret_keys_and_values():
    cleaned = tracking.scrub({"lr": 1e-4, "hf_token": "abc", "nested": {"api_key": "k", "x": [SECRET, "ok"]},
                              "wandb_project": "musicgen-lora"})
    assert cleaned == {"lr": 1e-4, "hf_token": "<hidden>", "nested": {"api_key": "<hidden>", "x": ["<hidden>", "ok"]},
                       "wandb_project": "musicgen-lora"}


def test_a_wandb_usage_error_says_what_to_check(tmp_path):
    with pytest.raises(UserError, match="Invalid project name.*Check the WandB settings") as err:
        tracking.start(mode="offline", project="bad/project", directory=tmp_path, config={})
    assert "API key" not in str(err.value)


def test_scrub_hides_secret_looking_keys_by_word_not_every_key_containing_token():
    config = {"tokens": "/content/drive/MyDrive/musicgen/tokens", "max_new_tokens": 256, "tokenizer": "t5-base",
              "key": "Eb major", "hf_token": "x", "token": "x", "WANDB_API_KEY": "x", "apiKey": "x", "password": "x",
              "client_secret": "x", "db_passwd": "x", "private_key": "x", "push_token": "x"}
    cleaned = tracking.scrub(config)
    shown = {k for k, v in cleaned.items() if v != "<hidden>"}
    assert shown == {"tokens", "max_new_tokens", "tokenizer", "key"}
