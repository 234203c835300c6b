"""Encoders as plugins: spec parsing, the registry, the transformers (``hf:``) encoder and a
real plugin package installed with pip. The Hugging Face models are tiny random ones built
from configs, saved with ``save_pretrained`` and loaded through the real ``from_pretrained``
path, with real tokenizers (CLIP BPE, SigLIP SentencePiece, Chinese-CLIP WordPiece)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from mmsearch import Index
from mmsearch.errors import ModelError
from mmsearch.models import registry
from mmsearch.models.base import Encoder
from mmsearch.models.registry import load_encoder, register
from mmsearch.models.spec import DEMO_DIR, parse

PLUGIN_SOURCE = Path(__file__).parent / "plugin_example"
WORDS = "a an the two red green blue yellow circle square star photo of on background".split()
CHINESE = "一两三个只红绿蓝黄色的圆形方星心海滩上狗照片背景灰白黑"
TINY = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}
VISION = {**TINY, "image_size": 32, "patch_size": 8}


# -- specs and the registry -------------------------------------------------------------


@pytest.fixture(autouse=True)
def own_registrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Schemes a test registers vanish with it."""
    monkeypatch.setattr(registry, "_registered", {})


def test_specs_parse_to_their_scheme_without_loading_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse("demo").scheme == "demo" and parse("demo").audio == f"tower:{DEMO_DIR}"
    tag = parse(" ViT-B-32:laion2b_s34b_b79k ")
    assert (tag.scheme, tag.spec, tag.name) == ("open_clip", "ViT-B-32:laion2b_s34b_b79k", tag.spec)
    assert parse("hf-hub:org/repo").scheme == "open_clip"
    checkpoint = tmp_path / "model.pt"
    assert parse(f"ViT-B-32:{tmp_path}/../{tmp_path.name}/model.pt").spec == f"ViT-B-32:{checkpoint}"
    assert parse("hf:org/repo").name == "org/repo"
    monkeypatch.chdir(tmp_path)
    assert parse("hf:./folder").spec == f"hf:{tmp_path / 'folder'}"
    # A prefix is a plugin's scheme only when a plugin claims it; otherwise it is an open_clip arch.
    assert parse("colours:rgb").scheme == "open_clip"
    assert parse("colours:rgb", {"colours"}).scheme == "colours"
    partnered = parse(f"hf:org/repo+clap:{tmp_path}")
    assert (partnered.base, partnered.audio) == ("hf:org/repo", f"clap:{tmp_path}")
    for bad, message in (("hf:repo", "hf:ORG/REPO"), ("nothing", "names no weights"), ("demo+clap:", "no CLAP")):
        with pytest.raises(ModelError, match=message):
            parse(bad)


def test_an_unknown_scheme_is_one_line_naming_the_installed_ones() -> None:
    with pytest.raises(ModelError) as caught:
        load_encoder("nosuchplugin:some-name", "cpu")
    message = str(caught.value)
    assert "\n" not in message
    assert "unknown model scheme 'nosuchplugin'" in message and "'mmsearch.encoders' entry point" in message
    assert "demo, hf:" in message and "pip install mmsearch-nosuchplugin" in message


class Letters(Encoder):
    """Texts by their letter counts: a registered encoder for in-process tests."""

    modalities = frozenset({"text"})
    dim = 26

    def __init__(self, name: str, device: str) -> None:
        self.space_id = f"letters:{name}"

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        return np.array([[text.lower().count(chr(97 + i)) for i in range(26)] for text in texts], np.float32)


def test_a_registered_scheme_builds_indexes_that_reopen_by_spec(tmp_path: Path) -> None:
    register("letters")(Letters)
    encoder = load_encoder("letters:v1")
    assert (encoder.spec, encoder.space_id, encoder.dim) == ("letters:v1", "letters:v1", 26)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("aaaa bbb")
    (notes / "z.txt").write_text("zzz yyy")
    Index.create(tmp_path / "index", model="letters:v1").add([notes], workers=0)
    reopened = Index.open(tmp_path / "index")
    assert reopened.manifest.model == "letters:v1"
    assert Path(reopened.search("zzzz", k=1)[0].path).name == "z.txt"


def test_an_encoder_breaking_the_contract_fails_at_load() -> None:
    @register("broken")
    def broken(name: str, device: str) -> Encoder:
        encoder = Letters(name, device)
        encoder.modalities = frozenset({"image", "text"})  # but no image_input
        return encoder

    with pytest.raises(ModelError, match=r"'broken' encoder .* embeds images but sets no image_input"):
        load_encoder("broken:x")

    @register("crashing")
    def crashing(name: str, device: str) -> Encoder:
        raise RuntimeError("weights\nmissing")

    with pytest.raises(
        ModelError, match=r"^encoder plugin 'crashing' \(registered in this process\) .* weights missing$"
    ):
        load_encoder("crashing:x")
    with pytest.raises(ModelError, match="reserved"):
        register("hf")


# -- a plugin package, installed ----------------------------------------------------------


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The example plugin installed by pip into a folder of its own (not the project's venv):
    a real distribution with its entry point, found through ``PYTHONPATH``."""
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("build") / "plugin"
    shutil.copytree(PLUGIN_SOURCE, source)  # setuptools builds in the source tree: keep the checkout clean
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "--target", str(target), str(source)], check=True, capture_output=True, timeout=120)
    return str(target)


def test_an_installed_plugin_indexes_and_queries_and_its_absence_is_explained(
    plugin_path: str, photos: Path, tmp_path: Path
) -> None:
    index = str(tmp_path / "index")
    with_plugin = {"PYTHONPATH": plugin_path}
    listed = run_cli("models", "--json", env=with_plugin)
    assert {
        "spec": "colours:NAME",
        "description": "plugin from mmsearch-colours 0.1.0: Example mmsearch encoder "
        "plugin: images and colour words embedded by colour",
    } in json.loads(listed.stdout)
    added = run_cli("index", str(photos), "--index", index, "--model", "colours:rgb", env=with_plugin)
    assert added.returncode == 0, added.stderr
    found = run_cli("query", "blue", "-k", "2", "-f", "--index", index, env=with_plugin)
    assert found.returncode == 0, found.stderr
    assert {Path(line).stem for line in found.stdout.split()} == {"blue"}
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())["model"] == "colours:rgb"

    missing = run_cli("query", "blue", "--index", index)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "unknown model scheme 'colours'" in missing.stderr and "pip install mmsearch-colours" in missing.stderr


# -- Hugging Face transformers models ------------------------------------------------------


def _clip_tokenizer(folder: Path):
    """CLIP's real BPE tokenizer over a tiny vocabulary: letters plus merges for ``WORDS``."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab |= {letter: len(vocab), f"{letter}</w>": len(vocab) + 1}
    merges = []
    for word in WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return CLIPTokenizer.from_pretrained(folder)


def _siglip_tokenizer(folder: Path):
    """SigLIP's real SentencePiece tokenizer, its model trained here on a few captions."""
    import sentencepiece
    from transformers import SiglipTokenizer

    captions = [f"{n} {c} {s}" for n in ("a", "two") for c in WORDS[4:8] for s in WORDS[8:11]]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=model, vocab_size=40, pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    folder.mkdir()
    (folder / "spiece.model").write_bytes(model.getvalue())
    return SiglipTokenizer(str(folder / "spiece.model"))


def _bert_tokenizer(folder: Path):
    """Chinese-CLIP's real WordPiece tokenizer: one token per Chinese character."""
    from transformers import BertTokenizer

    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *CHINESE]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer(str(folder / "vocab.txt"))


def _save(folder: Path, kind: str) -> Path:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if kind == "clip":
        tokenizer = _clip_tokenizer(folder / "tokenizer")
        text = {**TINY, "vocab_size": len(tokenizer), "max_position_embeddings": 32, "eos_token_id": 1}
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16))
        images = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = tf.CLIPProcessor(image_processor=images, tokenizer=tokenizer)
    elif kind == "siglip":
        tokenizer = _siglip_tokenizer(folder / "tokenizer")
        text = {**TINY, "vocab_size": len(tokenizer), "max_position_embeddings": 16}
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=VISION))
        images = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
        processor = tf.SiglipProcessor(image_processor=images, tokenizer=tokenizer)
    else:
        tokenizer = _bert_tokenizer(folder / "tokenizer")
        text = {**TINY, "vocab_size": len(tokenizer), "max_position_embeddings": 24}
        model = tf.ChineseCLIPModel(tf.ChineseCLIPConfig(text_config=text, vision_config=VISION, projection_dim=16))
        images = tf.ChineseCLIPImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
        processor = tf.ChineseCLIPProcessor(image_processor=images, tokenizer=tokenizer)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return folder / "model"


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``hf_model(kind)``: the folder of a tiny random ``clip``, ``siglip`` or ``chinese_clip``."""
    pytest.importorskip("transformers")
    saved: dict[str, Path] = {}

    def folder(kind: str) -> Path:
        if kind not in saved:
            saved[kind] = _save(tmp_path_factory.mktemp(kind), kind)
        return saved[kind]

    return folder


@pytest.mark.parametrize("kind", ["clip", "siglip", "chinese_clip"])
def test_hf_models_index_and_search_images_by_text(
    hf_model: Callable[[str], Path], kind: str, photos: Path, tmp_path: Path
) -> None:
    folder = hf_model(kind)
    encoder = load_encoder(f"hf:{folder}", "cpu")
    assert encoder.spec == f"hf:{folder}" and encoder.space_id.startswith(f"hf:{kind}@sha256:")
    assert encoder.modalities == {"image", "text"} and encoder.image_input.size == 32
    index = Index.create(tmp_path / "index", encoder=encoder)
    summary = index.add([photos], workers=0)
    assert summary.failed == [] and summary.vectors == 12
    vectors = index.vectors(list(range(12)))
    assert vectors.shape == (12, encoder.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    hits = index.search("a red circle", k=3)
    assert len(hits) == 3 and hits[0].score >= hits[-1].score

    again = load_encoder(f"hf:{folder}", "cpu")  # a fresh load through from_pretrained: the same space
    assert again.space_id == encoder.space_id
    texts = ["a red circle", "two blue squares", "海滩上的一只狗"]
    assert np.array_equal(again.embed_texts(texts), encoder.embed_texts(texts))
    assert Index.open(tmp_path / "index").encoder.space_id == encoder.space_id  # reopened from the manifest


def test_chinese_queries_tokenise_and_embed(hf_model: Callable[[str], Path]) -> None:
    encoder = load_encoder(f"hf:{hf_model('chinese_clip')}", "cpu")
    tokens = encoder.tokenizer.convert_ids_to_tokens(encoder.tokenizer("海滩上的一只狗")["input_ids"])  # type: ignore[attr-defined]
    assert tokens == ["[CLS]", *"海滩上的一只狗", "[SEP]"]
    vectors = encoder.embed_texts(["海滩上的一只狗", "一个红色的圆形", "海滩上的一只狗"])
    assert vectors.shape == (3, encoder.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])


def test_hf_folders_that_cannot_serve_fail_in_one_line(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    with pytest.raises(ModelError, match="no transformers model in"):
        load_encoder(f"hf:{tmp_path / 'nothing'}", "cpu")
    text_only = tmp_path / "bert"
    config = transformers.BertConfig(vocab_size=8, **TINY, max_position_embeddings=8)
    transformers.BertModel(config).save_pretrained(text_only)
    with pytest.raises(ModelError, match="is a bert model, not an image-text dual encoder"):
        load_encoder(f"hf:{text_only}", "cpu")
