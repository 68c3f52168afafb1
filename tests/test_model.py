"""ClaraModel: memory tokens, straight-through top-k, stage-3 gradients, save/load, shared mode."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from clara_pipeline.config import resolve_model_path
from clara_pipeline.model import ClaraModel, mem_token_names, straight_through_topk
from clara_pipeline.tokenizer import build_generator_tokenizer

DOCS = [
    "Alba Rint was born in 1950 in Corva. She studied botany at the Tessel Institute.",
    "Corva is a harbour town on the Vell coast, founded in 1312 by salt traders.",
    "The Tessel Institute is a research school in Marrow, known for its glass library.",
    "Grey Harbour is a novel by Oren Vask, published in 1987 by Lintel Press.",
    "Oren Vask was born in 1931 in Marrow and died in 2004 in Corva.",
    "Lintel Press is a publisher in Marrow that prints poetry and travel books.",
]
QA = [
    ("Where was Alba Rint born?", "Corva", 0),
    ("When was Corva founded?", "1312", 1),
    ("Where is the Tessel Institute?", "Marrow", 2),
    ("Who wrote Grey Harbour?", "Oren Vask", 3),
    ("When was Oren Vask born?", "1931", 4),
    ("Where is Lintel Press?", "Marrow", 5),
]
TINY_GEN = {"vocab_size": 600, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}



def separate_cfg(compressor_path, doc_max_length=32, compression_rate=8):
    return {"mode": "separate", "compressor_path": compressor_path, "generator_path": None,
            "doc_max_length": doc_max_length, "compression_rate": compression_rate, "question_max_length": 16,
            "answer_max_length": 8, "generator": dict(TINY_GEN), "lora": dict(LORA)}


def corpus():
    return DOCS + [q + " " + a for q, a, _ in QA]


def lora_grads(model, adapter):
    # adapter name = the part after lora_A/lora_B (BERT also has modules called "query")
    return [(n, p.grad) for n, p in model.named_parameters() if "lora_" in n and n.split(".")[-2] == adapter]


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [4, 8, 16, 32])
def test_memory_token_count_and_compress_shape(tiny_bert, rate):
    model = ClaraModel.from_params(separate_cfg(tiny_bert, doc_max_length=64, compression_rate=rate), corpus())
    n = 64 // rate
    assert model.n_mem == n
    assert model.mem_embeddings.shape[0] == n
    vocab = model.enc_tok.get_vocab()
    assert all(name in vocab for name in mem_token_names(n))
    out = model.compress(DOCS[:3])
    assert out.shape == (3, n, model.hidden_size) == (3, n, TINY_GEN["hidden_size"])
    assert model.encode_queries(["Where?", "Who?"]).shape == (2, n, model.hidden_size)


def test_embedded_minilm_default_shapes():
    cfg = separate_cfg("embedded-minilm", doc_max_length=64, compression_rate=8)
    model = ClaraModel.from_params(cfg, corpus())
    assert model.n_mem == 8
    assert model._encoder_body().config.hidden_size == 384
    assert model.compress(DOCS[:2]).shape == (2, 8, TINY_GEN["hidden_size"])


def reference_soft_topk(scores, k, temperature):
    """Sequential softmax, masking the documents hard top-k already chose."""
    idx = torch.topk(scores, k, dim=-1).indices
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    steps = []
    for j in range(k):
        steps.append(torch.softmax(scores.masked_fill(chosen, float("-inf")) / temperature, -1))
        chosen = chosen | F.one_hot(idx[:, j], scores.shape[1]).bool()
    return torch.stack(steps, 1)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_straight_through_topk_forward_and_gradient(temperature):
    torch.manual_seed(0)
    scores = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 3, 7, dtype=torch.float64)
    sel = straight_through_topk(scores, 3, temperature)
    hard = F.one_hot(torch.topk(scores, 3, dim=-1).indices, 7).to(sel.dtype)
    assert torch.equal(sel.detach(), hard)  # exact, not approximately
    assert torch.equal(sel.argmax(-1), torch.topk(scores, 3, dim=-1).indices)
    (sel * weights).sum().backward()
    grad_st = scores.grad.clone()
    scores.grad = None
    (reference_soft_topk(scores, 3, temperature) * weights).sum().backward()
    assert torch.allclose(grad_st, scores.grad)
    assert grad_st.abs().sum() > 0


def test_stage3_answer_loss_trains_query_not_frozen_compressor(tiny_bert):
    model = ClaraModel.from_params(separate_cfg(tiny_bert), corpus())
    model.train()
    model.set_trainable({"query", "generator"})  # freeze_compressor: true
    B, N = 2, 4
    cands = model.compress(DOCS[: B * N // 2] * 2).view(B, N, model.n_mem, -1)  # no_grad, like the cache
    loss, metrics, selection, scores = model.stage3_loss(["Where was Alba Rint born?", "Who wrote Grey Harbour?"],
                                                         cands, ["Corva", "Oren Vask"], top_k=2, temperature=1.0)
    hard = F.one_hot(torch.topk(scores, 2, dim=-1).indices, N).to(selection.dtype)
    assert torch.equal(selection.detach(), hard)
    loss.backward()
    q = lora_grads(model, "query")
    assert q and any(g is not None and g.abs().sum() > 0 for _, g in q)
    assert all(g is None or g.abs().sum() == 0 for _, g in lora_grads(model, "compressor"))
    assert model.mem_embeddings.grad is None and all(p.grad is None for p in model.projector.parameters())


def test_save_load_bit_identical_and_missing_tensor_raises(tiny_bert, tmp_path):
    model = ClaraModel.from_params(separate_cfg(tiny_bert), corpus(), seed=3)
    with torch.no_grad():  # make LoRA B non-zero so the adapters actually matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.save(tmp_path / "ckpt")
    loaded = ClaraModel.load(tmp_path / "ckpt")
    a, b = model.compress(DOCS), loaded.compress(DOCS)
    assert torch.equal(a, b)
    assert torch.equal(model.encode_queries(["Who?"]), loaded.encode_queries(["Who?"]))
    qs = [q for q, _, _ in QA[:3]]
    docs = a[:3].unsqueeze(1)
    assert model.generate(qs, docs, max_new_tokens=6) == loaded.generate(qs, docs, max_new_tokens=6)
    assert model.generate(qs, None, max_new_tokens=4) == loaded.generate(qs, None, max_new_tokens=4)

    weights = tmp_path / "ckpt" / "weights.safetensors"
    state = load_file(str(weights))
    state.pop(sorted(k for k in state if "lora_A" in k)[0])
    save_file(state, str(weights))
    with pytest.raises(ValueError, match="missing"):
        ClaraModel.load(tmp_path / "ckpt")


def test_generate_returns_strings(tiny_bert):
    model = ClaraModel.from_params(separate_cfg(tiny_bert), corpus())
    docs = model.compress(DOCS[:4]).view(2, 2, model.n_mem, -1)
    out = model.generate(["Where?", "Who?"], docs, max_new_tokens=3, batch_size=1)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)


# ---- shared mode: one causal LM with three adapters --------------------------------------------------------

ARCHS = {
    "llama": lambda v: LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "qwen2": lambda v: Qwen2Config(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "mistral": lambda v: MistralConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_shared_mode_tiny_backbones(arch, tmp_path):
    tok = build_generator_tokenizer(corpus(), vocab_size=500)
    cfg = ARCHS[arch](len(tok))
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / arch)
    tok.save_pretrained(tmp_path / arch)
    model_cfg = {"mode": "shared", "backbone_path": str(tmp_path / arch), "doc_max_length": 32,
                 "compression_rate": 4, "question_max_length": 16, "answer_max_length": 8, "lora": dict(LORA)}
    model = ClaraModel.from_params(model_cfg)
    assert model.n_mem == 8 and model.projector is None and model.hidden_size == 32
    assert all(name in model.enc_tok.get_vocab() for name in mem_token_names(8))
    assert model._generator_lm().get_input_embeddings().weight.shape[0] >= len(model.enc_tok)
    assert set(model.backbone.peft_config) == {"compressor", "generator", "query"}
    assert model.compress(DOCS[:3]).shape == (3, 8, 32)

    model.train()
    model.set_trainable({"compressor", "generator"})
    with torch.no_grad():  # non-zero generator LoRA B, so gradient reaches the compressor through it
        for n, p in model.named_parameters():
            if "lora_B" in n and n.split(".")[-2] == "generator":
                p.normal_(0, 0.05)
    loss, metrics = model.stage1_loss(DOCS[:2], ["Where was Alba Rint born?", "When was Corva founded?"],
                                      ["Corva", "1312"], mse_weight=0.1)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(g is not None and g.abs().sum() > 0 for _, g in lora_grads(model, "compressor"))
    assert any(g is not None and g.abs().sum() > 0 for _, g in lora_grads(model, "generator"))
    assert model.mem_embeddings.grad is not None and model.mem_embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n and n != "mem_embeddings")
    assert len(model.generate(["Where?"], model.compress(DOCS[:1]).unsqueeze(1), max_new_tokens=3)) == 1


def test_separate_mode_with_local_generator_path(tiny_bert, tmp_path):
    """generator_path set: the generator is a frozen local causal LM with a LoRA adapter "generator"."""
    tok = build_generator_tokenizer(corpus(), vocab_size=500)
    cfg = ARCHS["llama"](len(tok))
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "gen")
    tok.save_pretrained(tmp_path / "gen")
    model_cfg = separate_cfg(tiny_bert) | {"generator_path": str(tmp_path / "gen")}
    model = ClaraModel.from_params(model_cfg)
    assert not model.generator_scratch and model.hidden_size == 32
    model.train()
    params = model.set_trainable({"compressor", "generator"})
    assert all(model._part_of(n) in {"compressor", "generator"} for n, p in model.named_parameters() if p.requires_grad)
    assert sum(p.numel() for p in params) < sum(p.numel() for p in model.parameters()) / 2  # base stays frozen
    loss, _ = model.stage1_loss(DOCS[:2], ["Where?", "When?"], ["Corva", "1312"], mse_weight=0.1)
    loss.backward()
    assert any(g is not None and g.abs().sum() > 0 for _, g in lora_grads(model, "generator"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.save(tmp_path / "ckpt")
    loaded = ClaraModel.load(tmp_path / "ckpt")
    docs = model.compress(DOCS[:2]).unsqueeze(1)
    assert torch.equal(docs, loaded.compress(DOCS[:2]).unsqueeze(1))
    assert model.generate(["Where?", "When?"], docs, 5) == loaded.generate(["Where?", "When?"], docs, 5)
