"""The production audio path: a CLAP model (loaded with transformers' real loaders from
a local folder) plus a projector fitted into an open_clip space. Real CLAP weights
cannot be downloaded here, so a tiny randomly initialised CLAP stands in."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import run_cli
from mmsearch import Index
from mmsearch.errors import ModelError
from mmsearch.models import projector
from mmsearch.models.fit_audio import fit_clap_projector
from mmsearch.models.registry import load_encoder

WORDS = "a an the red green blue yellow circle square star sound of dog bird high low note".split()
CAPTIONS = [f"the sound of a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "star")]


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLAP checkpoint folder, saved the way transformers saves any model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
        PreTrainedTokenizerFast,
    )

    warnings.filterwarnings("ignore", message="At least one mel filter")
    import torch

    torch.manual_seed(0)
    text = ClapTextConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    audio = ClapAudioConfig(
        window_size=4,
        num_mel_bins=16,
        spec_size=32,
        patch_size=4,
        patch_stride=(4, 4),
        hidden_size=32,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        enable_fusion=False,
        patch_embeds_hidden_size=16,
    )
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16))
    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    extractor = ClapFeatureExtractor(
        feature_size=16,
        sampling_rate=8000,
        hop_length=160,
        max_length_s=1,
        fft_window_size=256,
        truncation="rand_trunc",
    )
    folder = tmp_path_factory.mktemp("clap")
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=extractor, tokenizer=fast).save_pretrained(folder)
    return folder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_projector_fit_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(0)
    source = rng.normal(size=(500, 8))
    true = rng.normal(size=(8, 4))
    fitted = projector.fit(source, source @ true + 0.5, "a", "b", ridge=1e-6)
    assert np.allclose(fitted.weight, true, atol=1e-3)
    assert np.allclose(fitted.bias, 0.5, atol=1e-3)


def test_missing_projector_names_the_fit_command(tiny_clap: Path, random_checkpoint: str, cache: Path) -> None:
    with pytest.raises(ModelError, match="mmsearch fit-audio"):
        load_encoder(f"{random_checkpoint}+clap:{tiny_clap}")


def test_fit_then_index_and_search_audio(tiny_clap: Path, random_checkpoint: str, cache: Path, tmp_path: Path) -> None:
    spec = f"{random_checkpoint}+clap:{tiny_clap}"
    path, pairs = fit_clap_projector(spec, CAPTIONS)
    assert path.is_file() and path.is_relative_to(cache) and pairs == len(CAPTIONS)
    encoder = load_encoder(spec)
    assert "audio" in encoder.modalities and encoder.audio_input.sample_rate == 8000

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    t = np.arange(8000 * 3) / 8000
    for name, freq in (("low", 220), ("mid", 880), ("high", 2500)):
        soundfile.write(sounds / f"{name}.wav", 0.5 * np.sin(2 * np.pi * freq * t), 8000)
    index = Index.create(tmp_path / "index", encoder=encoder)
    summary = index.add([sounds], workers=0)
    assert (summary.embedded, summary.vectors) == (3, 9)  # 3 s at 1 s windows
    assert index.manifest.audio_space_id == encoder.audio_space_id
    hits = index.search(audio=sounds / "mid.wav", k=3)
    assert {h.modality for h in hits} == {"audio"}
    assert hits[0].path == str(sounds / "mid.wav")


def test_fit_audio_command(tiny_clap: Path, random_checkpoint: str, tmp_path: Path) -> None:
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS))
    env = {"MMSEARCH_CACHE": str(tmp_path / "cache")}
    spec = f"{random_checkpoint}+clap:{tiny_clap}"
    result = run_cli("fit-audio", spec, "--captions", str(captions), env=env)
    assert result.returncode == 0, result.stderr
    assert f"fitted on {len(CAPTIONS)} captions" in result.stdout
    missing = run_cli("fit-audio", spec, "--captions", str(tmp_path / "nope.txt"), env=env)
    assert missing.returncode == 2 and "captions file not found" in missing.stderr
