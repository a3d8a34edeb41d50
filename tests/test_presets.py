"""GPU presets: detection, a fitting batch x accumulation per GPU and model size, measured timing."""

import pytest

from _train_helpers import live_musicgens, small_config, tokens
from nbutils.train import estimate, presets


@pytest.mark.parametrize("name, vram, expected", [
    ("NVIDIA A100-SXM4-80GB", 79.2, "A100 80GB"),
    ("NVIDIA A100-SXM4-40GB", 39.6, "A100 40GB"),
    ("NVIDIA L4", 22.5, "L4"),
    ("Tesla V100-SXM2-16GB", 15.8, "V100 16GB"),
    ("Tesla T4", 15.0, "T4"),
    ("NVIDIA H100 80GB HBM3", 79.6, "NVIDIA H100 80GB HBM3"),
])
def test_detects_the_colab_gpus(name, vram, expected):
    gpu = presets.detect({"name": name, "vram_gb": vram, "bf16": "T4" not in name and "V100" not in name})
    assert gpu.name == expected and gpu.vram_gb == vram


def test_table_covers_every_gpu_and_size_with_the_same_effective_batch():
    rows = presets.table()
    assert {(r.device, r.model) for r in rows} == {(g.name, s) for g in presets.KNOWN_GPUS.values()
                                                   for s in ("small", "medium", "large", "melody", "melody-large")}
    for row in rows:
        assert row.effective_batch == presets.EFFECTIVE_BATCH, row
        assert row.precision == ("fp16" if row.device in ("T4", "V100 16GB") else "bf16"), row
        gpu = next(g for g in presets.KNOWN_GPUS.values() if g.name == row.device)
        assert row.memory_gb <= presets.USABLE * gpu.vram_gb or row.note, row
    by = {(r.device, r.model): r for r in rows}
    for size in presets.SIZES:  # more memory: never checkpointing where less did without,
        rows_up = [by[(g, size)] for g in ("T4", "L4", "A100 40GB", "A100 80GB")]  # nor a smaller batch
        flags = [r.grad_checkpointing for r in rows_up]
        assert flags == sorted(flags, reverse=True), (size, flags)
        plain = [r.batch_size for r in rows_up if not r.grad_checkpointing]
        assert plain == sorted(plain), (size, plain)
    assert by[("A100 80GB", "small")].batch_size >= 8 and not by[("A100 80GB", "small")].grad_checkpointing
    assert by[("T4", "large")].grad_checkpointing and by[("T4", "large")].batch_size <= 4
    assert "A100 80GB" in presets.format_table(rows)


def test_memory_model_is_monotonic():
    shape = presets.SIZES["medium"]
    assert presets.memory_gb(shape, 2, 30, False) > presets.memory_gb(shape, 1, 30, False)
    assert presets.memory_gb(shape, 4, 30, False) > presets.memory_gb(shape, 4, 10, False)
    assert presets.memory_gb(shape, 4, 30, True) < presets.memory_gb(shape, 4, 30, False)
    assert presets.SIZES["large"].decoder_params > presets.SIZES["medium"].decoder_params > 3e8


def test_suggestion_for_models_and_cpu():
    assert presets.suggest("tiny", gpu=None).precision == "fp32"
    a100 = presets.suggest("facebook/musicgen-small", gpu={"name": "NVIDIA A100-SXM4-40GB", "vram_gb": 39.6,
                                                          "bf16": True})
    assert a100.model == "small" and a100.precision == "bf16" and a100.effective_batch == 16
    assert presets.shape_of("facebook/musicgen-stereo-large")[0] == "large"  # no download for hub sizes
    assert presets.shape_of("tiny")[0] == "tiny"
    assert presets.shape_of("tiny-stereo")[1].codebooks == 8


def test_stereo_counts_its_eight_codebooks():
    (_, mono), (_, stereo) = (presets.shape_of("facebook/musicgen-small"),
                              presets.shape_of("facebook/musicgen-stereo-small"))
    assert (mono.codebooks, stereo.codebooks) == (4, 8)
    assert presets.memory_gb(stereo, 4, 30, False) > presets.memory_gb(mono, 4, 30, False) + 0.4  # 4 x 123 MB logits


def test_measure_times_real_steps_and_estimates_an_epoch(tmp_path):
    out = tmp_path / "run"
    timing = estimate.measure(small_config(tokens(tmp_path), out, max_steps=20), steps=2)
    assert timing["seconds_per_step"] > 0 and timing["steps_per_epoch"] == 6
    assert timing["epoch_seconds"] == pytest.approx(timing["seconds_per_step"] * 6)
    assert timing["run_seconds"] == pytest.approx(timing["seconds_per_step"] * 20)
    assert not out.exists(), "measuring never touches the real run folder"


def test_measure_out_of_memory_says_what_to_lower_and_frees_the_model(tmp_path, monkeypatch):
    import torch

    from nbutils.core.errors import UserError
    from nbutils.train import stage as train

    before = live_musicgens()

    def full(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train.Trainer, "train_step", full)
    with pytest.raises(UserError, match=r"Out of GPU memory with batch_size 2\. Halve it") as err:
        estimate.measure(small_config(tokens(tmp_path), tmp_path / "run"), steps=2)
    assert err.value.__context__ is None and live_musicgens() == before
