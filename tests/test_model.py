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
from clara_pipeline.model import ClaraModel, mem_token_names, retrieval_loss, straight_through_topk
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
    # the index stores the compressor's own states (before the projector into the generator)
    assert out.shape == (3, n, model.memory_dim) == (3, n, model._encoder_body().config.hidden_size)
    assert model.encode_queries(["Where?", "Who?"]).shape == (2, n, model.memory_dim)


def test_embedded_minilm_default_shapes():
    cfg = separate_cfg("embedded-minilm", doc_max_length=64, compression_rate=8)
    model = ClaraModel.from_params(cfg, corpus())
    assert model.n_mem == 8
    assert model._encoder_body().config.hidden_size == 384
    assert model.compress(DOCS[:2]).shape == (2, 8, 384)  # compressor space; the projector feeds the generator
    assert model.hidden_size == TINY_GEN["hidden_size"]


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


def test_retrieval_loss_is_per_gold_contrastive_and_skips_rows_without_gold():
    scores = torch.tensor([[0.9, 0.1, 0.5, -0.2], [0.3, 0.8, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]], requires_grad=True)
    positives = torch.tensor([[True, False, True, False], [False, True, False, False], [False] * 4])
    T = 0.1
    loss = retrieval_loss(scores, positives, T)
    e = torch.exp(scores.detach() / T)
    neg0, neg1 = e[0, 1] + e[0, 3], e[1, 0] + e[1, 2] + e[1, 3]  # the other gold is no negative
    row0 = (-torch.log(e[0, 0] / (e[0, 0] + neg0)) - torch.log(e[0, 2] / (e[0, 2] + neg0))) / 2
    row1 = -torch.log(e[1, 1] / (e[1, 1] + neg1))
    assert torch.allclose(loss, (row0 + row1) / 2, atol=1e-5)  # the third row has no gold: left out
    loss.backward()
    g = scores.grad
    assert (g[positives] < 0).all() and (g[0, [1, 3]] > 0).all() and (g[1, [0, 2, 3]] > 0).all()
    assert torch.equal(g[2], torch.zeros(4))
    assert retrieval_loss(scores, torch.zeros_like(positives), T).item() == 0.0


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


def test_load_in_bfloat16_for_inference(tiny_bert, tmp_path):
    """ClaraModel.load(dtype=...) casts the model for serving; outputs stay float32 and close to float32's."""
    model = ClaraModel.from_params(separate_cfg(tiny_bert), corpus(), seed=3)
    randomise_lora_b(model)
    model.save(tmp_path / "ckpt")
    half = ClaraModel.load(tmp_path / "ckpt", dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    full, low = model.compress(DOCS), half.compress(DOCS)
    assert low.dtype == torch.float32 and low.shape == full.shape
    assert F.cosine_similarity(low.flatten(1), full.flatten(1)).min() > 0.98
    queries = half.encode_queries([q for q, _, _ in QA])
    assert queries.dtype == torch.float32 and torch.isfinite(queries).all()
    answers = half.generate([q for q, _, _ in QA[:2]], low[:2].unsqueeze(1), max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert ClaraModel.load(tmp_path / "ckpt", dtype="float32").mem_embeddings.dtype == torch.float32
    with pytest.raises(ValueError, match="bfloat16"):
        ClaraModel.load(tmp_path / "ckpt", dtype="int8")


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bfloat16_only_where_the_machine_has_it(monkeypatch, native):
    """params.yaml's "auto" (train.autocast, benchmark.dtype): on an AVX2-only CPU bfloat16 matmuls are hundreds
    of times slower than float32, so auto must fall back to float32 there, and take bfloat16 where native."""
    from clara_pipeline import model as model_module
    from clara_pipeline.train import autocast_dtype

    monkeypatch.setattr(model_module, "fast_bfloat16", lambda: native)
    want = torch.bfloat16 if native else None
    assert model_module.inference_dtype("auto") is want and autocast_dtype("auto") is want
    assert model_module.inference_dtype("bfloat16") is torch.bfloat16  # an explicit choice is kept
    assert autocast_dtype("none") is None and model_module.inference_dtype(None) is None
    # the stage log says what it trains in, and on a CPU where auto fell back, why it is slower
    from clara_pipeline.train import precision_note

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    note = precision_note(autocast_dtype("auto"), "auto")
    assert note == "bfloat16 autocast" if native else ("no native bfloat16" in note and note.startswith("float32"))
    assert precision_note(None, "none") == "float32"


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


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Tiny random-init Llama, Qwen2 and Mistral causal LMs saved as local folders (real architectures)."""
    root = tmp_path_factory.mktemp("backbones")
    tok = build_generator_tokenizer(corpus(), vocab_size=500)
    for arch, make in ARCHS.items():
        cfg = make(len(tok))
        cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(root / arch)
        tok.save_pretrained(root / arch)
    return root


def shared_cfg(path, compression_rate=4):
    return {"mode": "shared", "backbone_path": str(path), "doc_max_length": 32, "compression_rate": compression_rate,
            "question_max_length": 16, "answer_max_length": 8, "lora": dict(LORA)}


def randomise_lora_b(model, adapters=("compressor", "generator", "query")):
    """LoRA B starts at zero, which would hide adapters from every check; give them non-zero values."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n and n.split(".")[-2] in adapters:
                p.normal_(0, 0.05)


@pytest.mark.parametrize("rate", [1, 4, 32])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_shared_mode_memory_token_count(backbones, arch, rate):
    model = ClaraModel.from_params(shared_cfg(backbones / arch, rate))
    n = 32 // rate
    assert model.n_mem == n and model.mem_embeddings.shape == (n, 32)
    assert model.mem_ids == model.enc_tok.convert_tokens_to_ids(mem_token_names(n))
    assert model._generator_lm().get_input_embeddings().weight.shape[0] > max(model.mem_ids)
    assert model.compress(DOCS[:3]).shape == (3, n, 32)
    assert model.encode_queries(["Who?"]).shape == (1, n, 32)


@pytest.mark.parametrize("rate", [0, 64, 257])
def test_compression_rate_out_of_range_is_an_error(tiny_bert, rate):
    with pytest.raises(ValueError, match="compression_rate"):
        ClaraModel.from_params(separate_cfg(tiny_bert, doc_max_length=32, compression_rate=rate), corpus())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_shared_mode_tiny_backbones(backbones, arch, tmp_path):
    model = ClaraModel.from_params(shared_cfg(backbones / arch))
    assert model.n_mem == 8 and model.projector is None and model.hidden_size == 32
    assert set(model.backbone.peft_config) == {"compressor", "generator", "query"}

    # stage 1: compressor, generator and memory rows get gradient; the base weights none
    model.train()
    model.set_trainable({"compressor", "generator"})
    randomise_lora_b(model, ("generator",))  # so gradient reaches the compressor through the generator
    loss, metrics = model.stage1_loss(DOCS[:2], ["Where was Alba Rint born?", "When was Corva founded?"],
                                      ["Corva", "1312"], mse_weight=0.1)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(g is not None and g.abs().sum() > 0 for _, g in lora_grads(model, "compressor"))
    assert any(g is not None and g.abs().sum() > 0 for _, g in lora_grads(model, "generator"))
    assert model.mem_embeddings.grad is not None and model.mem_embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n and n != "mem_embeddings")

    # stage 3 with a frozen compressor: the answer loss reaches the query reasoner and not the compressor
    model.zero_grad(set_to_none=True)
    model.set_trainable({"query", "generator"})
    randomise_lora_b(model)
    cands = model.compress(DOCS[:4]).view(1, 4, model.n_mem, -1).repeat(2, 1, 1, 1)
    loss, _, selection, scores = model.stage3_loss(["Where was Alba Rint born?", "Who wrote Grey Harbour?"], cands,
                                                   ["Corva", "Oren Vask"], top_k=2, temperature=0.5)
    assert torch.equal(selection.detach(), F.one_hot(torch.topk(scores, 2, dim=-1).indices, 4).to(selection.dtype))
    loss.backward()
    assert any(g is not None and g.abs().sum() > 0 for _, g in lora_grads(model, "query"))
    assert all(g is None for _, g in lora_grads(model, "compressor")) and model.mem_embeddings.grad is None

    # save -> load: bit-identical compression, scores and answers (greedy and seeded sampling)
    model.save(tmp_path / "ckpt")
    loaded = ClaraModel.load(tmp_path / "ckpt")
    docs = model.compress(DOCS)
    assert torch.equal(docs, loaded.compress(DOCS))
    qs = [q for q, _, _ in QA[:3]]
    assert torch.equal(model.encode_queries(qs), loaded.encode_queries(qs))
    ctx = docs[:3].unsqueeze(1)
    assert model.generate(qs, ctx, 5) == loaded.generate(qs, ctx, 5)
    assert (model.generate(qs, ctx, 5, do_sample=True, seed=7) == loaded.generate(qs, ctx, 5, do_sample=True, seed=7))


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


# ---- inference API -------------------------------------------------------------------------------------------


def test_inference_api_batched_sampled_and_full_text(tiny_bert):
    model = ClaraModel.from_params(separate_cfg(tiny_bert), corpus(), seed=1)
    randomise_lora_b(model)
    docs = model.compress(DOCS)
    qs = [q for q, _, _ in QA]

    scores = model.score(model.encode_queries(qs), docs)
    manual = F.cosine_similarity(model.encode_queries(qs).flatten(1)[:, None], docs.flatten(1)[None], dim=-1)
    assert scores.shape == (6, 6) and torch.allclose(scores, manual, atol=1e-6)
    idx, top = model.retrieve(qs, docs, k=2)
    assert torch.equal(idx, torch.topk(scores, 2, dim=-1).indices) and torch.allclose(top, scores.gather(1, idx))
    assert torch.equal(model.score(docs, docs).argmax(-1), torch.arange(6))  # a document is closest to itself

    ctx = docs[idx]  # [Q, 2, n, d]: each question with its own top-2
    greedy = model.answer(qs, ctx, max_new_tokens=5)
    # batching (left padding, KV cache) does not change answers
    assert greedy == model.answer(qs, ctx, max_new_tokens=5, batch_size=1)
    # a nucleus too small to hold more than the top token is greedy decoding
    assert greedy == model.answer(qs, ctx, max_new_tokens=5, do_sample=True, top_p=1e-9, seed=0)
    sampled = model.answer(qs, ctx, max_new_tokens=5, do_sample=True, temperature=5.0, seed=0)
    assert sampled == model.answer(qs, ctx, max_new_tokens=5, do_sample=True, temperature=5.0, seed=0)
    assert sampled != greedy  # a hot, random-init model does not sample the argmax at every step

    texts = [[DOCS[i] for i in row] for row in idx.tolist()]
    full = model.answer_from_text(qs, texts, max_new_tokens=5)
    assert len(full) == 6 and full == model.answer_from_text(qs, texts, max_new_tokens=5, batch_size=4)
    prompt, starts = model._prompt_ids(qs[0], 0, texts[0])
    compressed_prompt, _ = model._prompt_ids(qs[0], 2)
    assert len(prompt) > len(compressed_prompt)  # raw text costs more positions than 2 x n_mem slots
    assert model.gen_tok.decode(prompt[starts[0]:]).startswith(" " + DOCS[idx[0, 0]][:20])
    assert model.gen_tok.decode(prompt[starts[1]:]).startswith(" " + DOCS[idx[0, 1]][:20])
    with pytest.raises(ValueError, match="contexts"):
        model.answer_from_text(qs, texts[:2])


def test_inference_folds_the_adapter_into_the_weights_and_follows_training(tiny_bert):
    """compress() runs base layers with W + scale*B@A (no LoRA side path); it must match the training-time
    output, and must notice when an optimizer step changes the adapter."""
    model = ClaraModel.from_params(separate_cfg(tiny_bert), corpus())
    model.eval()
    randomise_lora_b(model)
    slow = model.compress_with_grad(DOCS).detach()  # grad enabled: the LoRA side path
    assert torch.allclose(model.compress(DOCS), slow, atol=1e-5)
    before = model.compress(DOCS)
    params = model.set_trainable({"compressor"})
    opt = torch.optim.SGD(params, lr=0.5)
    # a fixed random direction: the encoder ends in a LayerNorm, so a squared norm would have ~no gradient
    direction = torch.randn_like(before, generator=torch.Generator().manual_seed(0))
    (model.compress_with_grad(DOCS) * direction).sum().backward()
    opt.step()
    after = model.compress(DOCS)
    assert not torch.allclose(after, before, atol=1e-4)
    assert torch.allclose(after, model.compress_with_grad(DOCS).detach(), atol=1e-5)
