"""CLaRa: compressed RAG with memory tokens and joint retrieval/generation training (arXiv 2511.18659).

One file, three parts:

1. the compressor: a document followed by n memory tokens <MEM0>..<MEM{n-1}> goes through an encoder; the last
   hidden states at the memory positions are the compressed document, n vectors. The query reasoner is the
   same network with a second LoRA adapter, fed the question instead, so a question lands in the same space.
2. the generator: a causal LM whose prompt has k*n placeholder positions; their input embeddings are replaced
   by the compressed vectors of the k retrieved documents.
3. the glue of stage 3: score candidates by cosine(query vectors, document vectors), pick top-k with a
   straight-through estimator, so the answer loss trains the query reasoner (officially alone; here a
   contrastive term over the index may be added, ``retrieval_loss``).

Two layouts (``model.mode``):
- "separate": a light encoder compressor (all-MiniLM-L6-v2 + LoRA "compressor"/"query") and a projector into
  a separate generator (a small Llama trained from scratch, or a local causal LM + LoRA "generator").
- "shared": the paper's setup, one causal LM with three LoRA adapters "compressor", "generator", "query";
  no projector since compressor and generator live in the same hidden space.

The trainable memory-token rows live in ``mem_embeddings`` (a small Parameter written over the embedding
lookup at the memory positions) rather than in the full embedding matrix, so the optimizer never holds state
for a 30k-150k row vocabulary and nothing else in the vocabulary can drift.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from transformers.utils import logging as hf_logging

# peft and DeepSpeed still read transformers' deprecated `is_gradient_checkpointing`; nothing here calls it
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

from .config import resolve_model_path
from .tokenizer import build_generator_tokenizer

ENCODER_LORA_TARGETS = ["query", "key", "value", "dense"]  # BERT-style attention + MLP linears
CHECKPOINT_FORMAT = "clara-v1"
MAX_COMPRESSION_RATE = 256  # the paper's range is 4-128; 1 (no compression) is a useful control


# the system line of each kind of generator prompt (chat style), see ClaraModel._prompt_ids
PROMPT_SYSTEM = {
    "question": "Answer the question from the background. Reply with the answer only.",
    "instruction": "Follow the instruction about the background.",
}
_DOCS, _QUERY = "\x00DOCS\x00", "\x00QUERY\x00"  # markers split out of the rendered chat template


# ----------------------------------------------------------------------------------------------------------
# straight-through top-k (stage 3)


INFERENCE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@functools.lru_cache(maxsize=None)
def fast_bfloat16() -> bool:
    """Whether this machine runs bfloat16 matmuls natively: a CUDA GPU that supports them, or a CPU that oneDNN
    has bfloat16 kernels for (AVX512 / AVX512-BF16 / AMX). On an AVX2-only CPU (an AMD EPYC Milan, torch 2.13)
    a 2048x2048 bfloat16 matmul took 57 s against 0.11 s in float32: there bfloat16 is a 500x slowdown."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def inference_dtype(name: str | None) -> torch.dtype | None:
    """"bfloat16" -> torch.bfloat16, with an error that lists the choices; None and "" mean no cast.

    "auto" is bfloat16 where :func:`fast_bfloat16`, else no cast (float32). An explicit "bfloat16" is kept
    even where it is slow, with a warning, since a user may want it for its numerics."""
    if not name:
        return None
    if str(name) not in INFERENCE_DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(INFERENCE_DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if fast_bfloat16() else None
    if name == "bfloat16" and not fast_bfloat16():
        _warn_slow_bfloat16()
    return getattr(torch, str(name))


@functools.lru_cache(maxsize=None)
def _warn_slow_bfloat16() -> None:
    logging.getLogger("clara_pipeline").warning(
        "bfloat16 was asked for, but this machine has no native bfloat16 matmuls (CPU capability %s): it runs "
        "many times slower than float32 here; use \"auto\" (params.yaml train.autocast, benchmark.dtype) to "
        "pick bfloat16 only where it is fast", torch.backends.cpu.get_cpu_capability())


def straight_through_topk(scores: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Select top-k of scores [B, N] as one-hot rows [B, k, N], differentiably.

    Forward: the exact hard selection, row j = one-hot of the j-th highest score.
    Backward: the gradient of a sequential softmax, step j = softmax((scores - inf * already_chosen) / T),
    so documents that were not picked still receive a signal of how much they would have helped.
    """
    B, N = scores.shape
    hard_idx = torch.topk(scores, k, dim=-1).indices  # [B, k], descending score
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    soft_steps = []
    for j in range(k):
        logits = scores.masked_fill(chosen, float("-inf")) / temperature
        soft_steps.append(torch.softmax(logits, dim=-1))
        chosen = chosen | F.one_hot(hard_idx[:, j], N).bool()
    soft = torch.stack(soft_steps, dim=1)  # [B, k, N]
    hard = F.one_hot(hard_idx, N).to(scores.dtype)
    # (soft - soft.detach()) is exactly zero in the forward pass, so the forward value is exactly `hard`
    return hard + (soft - soft.detach())


def retrieval_loss(scores: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Contrastive loss of scores [B, M] against a pool of M documents, positives [B, M] bool (a question's
    gold documents; rows without one are left out). Each gold document is scored against the row's non-gold ones:
    mean over golds of -log(exp(s_g/T) / (exp(s_g/T) + sum_neg exp(s_n/T))), so a two-hop question pulls
    both of its documents up instead of settling for the easier one."""
    rows = positives.any(dim=-1)  # a question whose gold documents are all outside the pool adds nothing
    if not bool(rows.any()):
        return scores.sum() * 0.0
    logits = scores[rows].float() / temperature
    positives = positives[rows]
    neg = torch.logsumexp(logits.masked_fill(positives, float("-inf")), dim=-1, keepdim=True)  # [B, 1]
    per_gold = torch.logaddexp(logits, neg) - logits  # [B, M], meaningful where positives
    per_gold = per_gold.masked_fill(~positives, 0.0)
    return (per_gold.sum(-1) / positives.sum(-1)).mean()


# ----------------------------------------------------------------------------------------------------------
# small helpers


def mem_token_names(n: int) -> list[str]:
    return [f"<MEM{i}>" for i in range(n)]


def _pad(seqs: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into (ids [B, L], attention mask [B, L])."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(L - len(s), L) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def _ensure_pad(tok) -> None:
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token


def _add_mem_tokens(tok, model, n: int) -> list[int]:
    """Add <MEM i> to the tokenizer, grow the embeddings if needed; returns their ids.

    New rows are set to the mean of the old ones (not random) so that building the same model twice gives
    the same weights: the rows are never trained (mem_embeddings is), but an untied LM head scores them.
    """
    names = mem_token_names(n)
    tok.add_tokens(names, special_tokens=True)  # no-op when loading a tokenizer saved with them
    ids = tok.convert_tokens_to_ids(names)
    old = model.get_input_embeddings().weight.shape[0]
    if max(ids) >= old:
        model.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[old:] = emb[:old].mean(0)
            out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            if out is not None and out.weight is not emb:
                out.weight[old:] = out.weight[:old].mean(0)
                if getattr(out, "bias", None) is not None:
                    out.bias[old:] = out.bias[:old].mean()
    return ids


def _lora_config(lora_cfg: dict, targets) -> LoraConfig:
    return LoraConfig(
        r=int(lora_cfg.get("r", 16)),
        lora_alpha=int(lora_cfg.get("alpha", 32)),
        lora_dropout=float(lora_cfg.get("dropout", 0.0)),
        target_modules=targets,
    )


def _copy_adapter(peft_model, src: str, dst: str) -> None:
    """Initialise adapter `dst` as an exact copy of adapter `src` (the paper starts the query reasoner there)."""
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            parts = name.split(".")  # ...lora_A.<adapter>.weight; only that segment names the adapter
            if "lora_" in name and parts[-2] == src:
                params[".".join(parts[:-2] + [dst, parts[-1]])].copy_(p)


# ----------------------------------------------------------------------------------------------------------
# the model


class ClaraModel(nn.Module):
    n_mem: int
    hidden_size: int   # the generator's input-embedding width
    memory_dim: int    # the compressor's width: what the index stores and retrieval scores (official CLaRa)

    def __init__(self, model_cfg: dict, corpus_texts: list[str] | None = None, seed: int = 0, _saved_dir=None):
        super().__init__()
        torch.manual_seed(seed)  # LoRA A matrices, projector and a from-scratch generator are random-init
        self.model_cfg = dict(model_cfg)
        self.seed = seed
        self.mode = model_cfg.get("mode", "separate")
        self.doc_max_length = int(model_cfg.get("doc_max_length", 64))
        rate = int(model_cfg.get("compression_rate", 8))
        if not 1 <= rate <= MAX_COMPRESSION_RATE or rate > self.doc_max_length:
            raise ValueError(f"model.compression_rate={rate}: must be between 1 and "
                             f"min({MAX_COMPRESSION_RATE}, doc_max_length={self.doc_max_length})")
        self.n_mem = self.doc_max_length // rate
        self.question_max_length = int(model_cfg.get("question_max_length", 32))
        self.answer_max_length = int(model_cfg.get("answer_max_length", 16))
        lora_cfg = model_cfg.get("lora") or {}
        # optional `model.dtype` (e.g. bfloat16 for a real backbone on GPU); float32 on CPU
        dtype = getattr(torch, str(model_cfg.get("dtype") or "float32"))
        saved = Path(_saved_dir) if _saved_dir is not None else None

        if self.mode == "shared":
            path = resolve_model_path(model_cfg.get("backbone_path"))
            if path is None:
                raise ValueError("mode 'shared' needs model.backbone_path (a local causal-LM folder)")
            tok = AutoTokenizer.from_pretrained(str(saved / "tokenizer") if saved else path)
            _ensure_pad(tok)
            base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            self.mem_ids = _add_mem_tokens(tok, base, self.n_mem)
            lora = _lora_config(lora_cfg, "all-linear")
            self.backbone = get_peft_model(base, lora, adapter_name="compressor")  # mutates `base` in place
            self.backbone.add_adapter("generator", lora)
            self.backbone.add_adapter("query", lora)
            _copy_adapter(self.backbone, "compressor", "query")
            self.enc_tok = self.gen_tok = tok
            self.generator_scratch = False
            self.projector = None
            d_enc = self.hidden_size = base.config.hidden_size
            self.memory_dim = d_enc
        elif self.mode == "separate":
            enc_path = resolve_model_path(model_cfg.get("compressor_path") or "embedded-minilm")
            self.enc_tok = AutoTokenizer.from_pretrained(str(saved / "compressor_tokenizer") if saved else enc_path)
            _ensure_pad(self.enc_tok)
            # no dropout: the base is frozen (LoRA trains), and train-time states then match the eval-time
            # states that the frozen-compressor stages cache; it is also ~10% faster on CPU
            no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
            try:  # the pooler is unused; dropping it also keeps LoRA off a layer that would get no gradient
                # (transformers then reports the checkpoint's pooler weights as unexpected: expected here)
                previous = hf_logging.get_verbosity()
                hf_logging.set_verbosity_error()
                try:
                    encoder = AutoModel.from_pretrained(enc_path, add_pooling_layer=False, **no_dropout)
                finally:
                    hf_logging.set_verbosity(previous)
            except TypeError:
                encoder = AutoModel.from_pretrained(enc_path, **no_dropout)
            self.mem_ids = _add_mem_tokens(self.enc_tok, encoder, self.n_mem)
            lora = _lora_config(lora_cfg, ENCODER_LORA_TARGETS)
            self.encoder = get_peft_model(encoder, lora, adapter_name="compressor")
            self.encoder.add_adapter("query", lora)
            _copy_adapter(self.encoder, "compressor", "query")
            d_enc = self.memory_dim = encoder.config.hidden_size

            gen_path = resolve_model_path(model_cfg.get("generator_path"))
            self.generator_scratch = gen_path is None
            if self.generator_scratch:
                g = model_cfg.get("generator") or {}
                if saved:
                    self.gen_tok = PreTrainedTokenizerFast.from_pretrained(str(saved / "generator_tokenizer"))
                else:
                    self.gen_tok = build_generator_tokenizer(corpus_texts, int(g.get("vocab_size", 4000)))
                heads = int(g.get("num_attention_heads", 4))
                config = LlamaConfig(
                    vocab_size=len(self.gen_tok),
                    hidden_size=int(g.get("hidden_size", 256)),
                    intermediate_size=int(g.get("intermediate_size", 688)),
                    num_hidden_layers=int(g.get("num_hidden_layers", 4)),
                    num_attention_heads=heads,
                    num_key_value_heads=int(g.get("num_key_value_heads", heads)),
                    max_position_embeddings=int(g.get("max_position_embeddings", 512)),
                    pad_token_id=self.gen_tok.pad_token_id,
                    bos_token_id=self.gen_tok.bos_token_id,
                    eos_token_id=self.gen_tok.eos_token_id,
                    tie_word_embeddings=True,  # fewer parameters; the small model trains faster
                )
                self.generator = LlamaForCausalLM(config)
            else:
                self.gen_tok = AutoTokenizer.from_pretrained(str(saved / "generator_tokenizer") if saved else gen_path)
                _ensure_pad(self.gen_tok)
                gbase = AutoModelForCausalLM.from_pretrained(gen_path, dtype=dtype)
                self.generator = get_peft_model(gbase, _lora_config(lora_cfg, "all-linear"), adapter_name="generator")
            self.hidden_size = self._generator_lm().config.hidden_size
            # a two-layer MLP from encoder space into the generator's input-embedding space
            self.projector = nn.Sequential(
                nn.Linear(d_enc, self.hidden_size), nn.GELU(), nn.Linear(self.hidden_size, self.hidden_size)
            )
        else:
            raise ValueError(f"model.mode must be 'separate' or 'shared', got {self.mode!r}")

        # chat: the generator's own chat template with a system line and a separator after each document, as
        # the official code prompts; plain: "Background: .. Question: .. Answer:" (a generator without one)
        style = model_cfg.get("prompt") or ("chat" if getattr(self.gen_tok, "chat_template", None) else "plain")
        if style not in ("chat", "plain") or (style == "chat" and not getattr(self.gen_tok, "chat_template", None)):
            raise ValueError(f"model.prompt={style!r}: 'chat' (needs a generator tokenizer with a chat template) "
                             f"or 'plain'")
        self.prompt_style = style
        # "Document 1:", "Document 2:" ... before each document's slot: a handle the generator can attend to
        # when it must pick the one document of k that the question is about (off: the official form; on, it
        # measured no gain, docs/embedded-default.md "The picking problem")
        self.number_documents = bool(model_cfg.get("number_documents", False))

        body = self._encoder_body()
        init = body.get_input_embeddings().weight[self.mem_ids].detach().clone()
        # small noise so the memory tokens start distinct even where their base rows are identical
        self.mem_embeddings = nn.Parameter(init + 0.02 * torch.randn_like(init))
        self._train_parts = {"compressor", "query", "generator"}
        self._restore_trainable()

    @classmethod
    def from_params(cls, model_cfg: dict, corpus_texts: list[str] | None = None, seed: int = 0) -> "ClaraModel":
        return cls(model_cfg, corpus_texts=corpus_texts, seed=seed)

    # ---- which module does what ------------------------------------------------------------------------

    def _encoder_peft(self):
        return self.backbone if self.mode == "shared" else self.encoder

    def _encoder_body(self):
        """The module that returns last_hidden_state (BertModel, or the decoder stack of the causal LM)."""
        if self.mode == "shared":
            return self.backbone.get_base_model().base_model
        return self.encoder.get_base_model()

    def _generator_lm(self):
        if self.mode == "shared":
            return self.backbone.get_base_model()
        return self.generator if self.generator_scratch else self.generator.get_base_model()

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(x) if self.projector is not None else x

    # ---- trainable flags and adapters --------------------------------------------------------------------

    def _part_of(self, name: str) -> str | None:
        """Which trainable group a parameter belongs to; None = frozen base weight."""
        if "lora_" in name:
            return name.split(".")[-2]  # ...lora_A.<adapter>.weight
        if name == "mem_embeddings" or name.startswith("projector."):
            return "compressor"
        if self.mode == "separate" and self.generator_scratch and name.startswith("generator."):
            return "generator"
        return None

    def set_trainable(self, parts) -> list[nn.Parameter]:
        """Train only these groups ("compressor", "query", "generator"); returns the trainable parameters."""
        self._train_parts = set(parts)
        self._restore_trainable()
        return [p for p in self.parameters() if p.requires_grad]

    def _restore_trainable(self) -> None:
        for name, p in self.named_parameters():
            p.requires_grad = self._part_of(name) in self._train_parts

    def _use_adapter(self, name: str) -> None:
        # peft's set_adapter flips requires_grad (active adapter on, others off); put our own flags back,
        # since in stage 1 both the compressor and the generator adapter must keep training
        pm = self._encoder_peft() if name in ("compressor", "query") or self.mode == "shared" else None
        if pm is not None and pm.active_adapter != name:
            pm.set_adapter(name)
            self._restore_trainable()

    def init_query_from_compressor(self) -> None:
        _copy_adapter(self._encoder_peft(), "compressor", "query")

    def _checkpoint_params(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if self._part_of(n) is not None}

    # ---- compressor / query reasoner ---------------------------------------------------------------------

    def _encode(self, texts: list[str], max_len: int, adapter: str, base_target: bool = False):
        """Texts + memory tokens -> (memory states [B, n, d_enc], mean memory state, mean text-token state).

        base_target: compute the mean text-token state with the adapters switched off and no gradient, i.e.
        the original backbone's view of the document: the fixed target of the SCP MSE term."""
        self._use_adapter(adapter)
        tok = self.enc_tok
        pieces = tok(list(texts), add_special_tokens=False, truncation=True, max_length=max_len)["input_ids"]
        prefix, suffix = self._wrap_ids()
        seqs = [prefix + p + self.mem_ids + suffix for p in pieces]
        ids, attn = _pad(seqs, tok.pad_token_id)
        is_doc = torch.zeros_like(ids, dtype=torch.bool)
        is_mem = torch.zeros_like(ids, dtype=torch.bool)
        for i, p in enumerate(pieces):
            is_doc[i, len(prefix) : len(prefix) + len(p)] = True
            is_mem[i, len(prefix) + len(p) : len(prefix) + len(p) + self.n_mem] = True
        body = self._encoder_body()
        device = self.mem_embeddings.device
        ids, attn, is_doc, is_mem = ids.to(device), attn.to(device), is_doc.to(device), is_mem.to(device)
        emb = body.get_input_embeddings()(ids)
        B, d = ids.shape[0], emb.shape[-1]
        mem = self.mem_embeddings.to(emb.dtype).unsqueeze(0).expand(B, -1, -1).reshape(-1, d)
        emb = emb.masked_scatter(is_mem.unsqueeze(-1), mem)
        h = self._run_encoder(body, emb, attn, adapter)
        mem_states = h[is_mem].view(B, self.n_mem, -1)
        if base_target:
            doc_mean = self._base_doc_means(list(texts)).to(device=h.device, dtype=h.dtype)
        else:
            docf = is_doc.unsqueeze(-1).to(h.dtype)
            doc_mean = (h * docf).sum(1) / docf.sum(1).clamp(min=1.0)
        return mem_states, mem_states.mean(1), doc_mean

    def _run_encoder(self, body, emb: torch.Tensor, attn: torch.Tensor, adapter: str) -> torch.Tensor:
        """Last hidden states of the encoder with `adapter` active.

        Without gradient in separate mode (index build, query encoding) a plain copy of the encoder with the
        adapter folded into its weights, W + scale * B @ A, runs instead: on CPU the LoRA side paths and
        peft's wrappers cost a sixth of encoding a question (12.2 -> 10.3 ms, benchmarks/latency.py). The
        copy costs the encoder's size once per adapter used (~90 MB for MiniLM). Shared mode keeps the side
        path, since a merged copy of a 7B backbone would double its memory."""
        if torch.is_grad_enabled() or self.mode != "separate":
            return body(inputs_embeds=emb, attention_mask=attn).last_hidden_state
        return self._merged_encoder(adapter)(inputs_embeds=emb, attention_mask=attn).last_hidden_state

    @torch.no_grad()
    def _merged_encoder(self, adapter: str) -> nn.Module:
        """A plain copy of the encoder with `adapter` merged in (no LoRA layers), cached until a LoRA or base
        tensor changes (optimizer steps and loads bump the tensors' version counters or replace them).

        Kept out of the module tree (in __dict__), so it is neither saved, nor counted, nor trained."""
        if "_lora_layer_cache" not in self.__dict__:  # walking the modules costs ms: find them once
            from peft.tuners.lora import LoraLayer

            self.__dict__["_lora_layer_cache"] = [m for m in self.encoder.modules() if isinstance(m, LoraLayer)]
        layers = [m for m in self.__dict__["_lora_layer_cache"] if adapter in m.lora_A]
        key = tuple((t.data_ptr(), t._version) for m in layers
                    for t in (m.lora_A[adapter].weight, m.lora_B[adapter].weight, m.base_layer.weight))
        cache = self.__dict__.setdefault("_merged_encoders", {})
        if adapter not in cache or cache[adapter][0] != key:
            cache.pop(adapter, None)  # free the stale copy before making the new one
            plain = copy.deepcopy(self.encoder).merge_and_unload(adapter_names=[adapter])
            plain.eval().requires_grad_(False)
            cache[adapter] = (key, plain)
        return cache[adapter][1]

    def _wrap_ids(self) -> tuple[list[int], list[int]]:
        """The special tokens the encoder puts around a text: (prefix, suffix)."""
        tok = self.enc_tok
        if tok.cls_token_id is not None:  # BERT: [CLS] text <MEM..> [SEP]
            return [tok.cls_token_id], ([tok.sep_token_id] if tok.sep_token_id is not None else [])
        # causal LM: [BOS] text <MEM..> ; memory tokens come last so they can attend to the whole text
        return ([tok.bos_token_id] if tok.bos_token_id is not None else []), []

    @torch.no_grad()
    def prepare_doc_targets(self, texts: list[str], batch_size: int = 32) -> None:
        """Compute the SCP MSE target of every text not cached yet, in the order given, `batch_size` at a time.

        The target is the mean token state of a text under the backbone alone (adapters off, no memory
        tokens). It depends on nothing that trains, so it is computed once per text: stage 1 sees each
        document many times and would otherwise pay a second encoder pass every step. Computing it in a
        fixed order also makes it independent of which batch first met the document (the padding would
        otherwise differ and move the last bits), which an exact resume after a kill needs."""
        cache = self.__dict__.setdefault("_doc_target_cache", {})
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        body = self._encoder_body()
        device = self.mem_embeddings.device
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            pieces = self.enc_tok(chunk, add_special_tokens=False, truncation=True,
                                  max_length=self.doc_max_length)["input_ids"]
            prefix, suffix = self._wrap_ids()
            ids, attn = _pad([prefix + p + suffix for p in pieces], self.enc_tok.pad_token_id)
            with self._encoder_peft().disable_adapter():
                h = body(input_ids=ids.to(device), attention_mask=attn.to(device)).last_hidden_state
            self._restore_trainable()
            for j, (text, p) in enumerate(zip(chunk, pieces)):
                states = h[j, len(prefix) : len(prefix) + len(p)].float()
                cache[text] = states.mean(0).cpu() if len(p) else torch.zeros(h.shape[-1])

    def _base_doc_means(self, texts: list[str]) -> torch.Tensor:
        self.prepare_doc_targets(texts)
        cache = self.__dict__["_doc_target_cache"]
        return torch.stack([cache[t] for t in texts])

    def compress_with_grad(self, texts: list[str]) -> torch.Tensor:
        """Compressed documents [B, n, memory_dim] inside the autograd graph (training).

        These are the compressor's own memory states, as in the official CLaRa: retrieval scores them and
        the index stores them; the projector (separate layout) maps them into the generator only when it
        reads them. Scoring the projected vectors instead measured R@5 0.043 against 0.197 (issue 11)."""
        return self._encode(texts, self.doc_max_length, "compressor")[0]

    def encode_queries_with_grad(self, questions: list[str]) -> torch.Tensor:
        """The query reasoner's memory states [B, n, memory_dim], in the same space as compressed documents."""
        return self._encode(questions, self.question_max_length, "query")[0]

    @contextlib.contextmanager
    def _eval_mode(self):
        """eval() for the duration. A model already in eval mode is left alone: switching walks every
        submodule, which cost ~9 ms per call on the embedded default, a third of encoding a question."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            yield
        finally:
            if was_training:
                self.train()

    @torch.no_grad()
    def _batched_eval(self, fn, items: list[str], batch_size: int) -> torch.Tensor:
        with self._eval_mode():
            outs = [fn(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
        if not outs:
            return torch.zeros(0, self.n_mem, self.memory_dim)
        return torch.cat(outs).float().cpu()

    def compress(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Documents -> [B, n_mem, memory_dim] (no grad, eval mode): what the index stores."""
        return self._batched_eval(self.compress_with_grad, list(texts), batch_size)

    def encode_queries(self, questions: list[str], batch_size: int = 32) -> torch.Tensor:
        return self._batched_eval(self.encode_queries_with_grad, list(questions), batch_size)

    # ---- generator ---------------------------------------------------------------------------------------

    def _prompt_ids(self, question: str, k: int, context: list[str] | None = None,
                    kind: str = "question") -> tuple[list[int], list[int]]:
        """The generator's prompt -> (ids, start of each document's placeholder slot).

        kind "question": the background then the question; "instruction": the background then an instruction
        (stage 1: write the document's QA pairs, or paraphrase it). Each document takes n_mem placeholder
        positions, whose embeddings the compressed vectors replace. context: raw document texts in place of
        the placeholders (the full-text baseline), each cut to doc_max_length generator tokens, the budget
        the compressor reads."""
        tok = self.gen_tok
        pre, mid, post, sep = self._prompt_parts(kind)
        lead = "" if self.prompt_style == "chat" else " "
        q = tok(lead + question.strip(), add_special_tokens=False, truncation=True,
                max_length=self.question_max_length)["input_ids"] if question.strip() else []
        ids, starts = list(pre), []
        docs = context if context is not None else [None] * k
        for i, text in enumerate(docs):
            if self.number_documents:
                ids += self._document_label(i)
            starts.append(len(ids))
            if text is None:
                ids += [tok.pad_token_id] * self.n_mem
            else:
                ids += tok(lead + text.strip(), add_special_tokens=False, truncation=True,
                           max_length=self.doc_max_length)["input_ids"]
            ids += sep
        return ids + mid + q + post, starts

    def number_prompt_documents(self, on: bool) -> None:
        """Switch model.number_documents on a built or loaded model (saved with it): a model pretrained on
        one-document prompts can be tuned on numbered lists."""
        self.number_documents = bool(on)
        self.model_cfg = {**self.model_cfg, "number_documents": self.number_documents}

    def _document_label(self, i: int) -> list[int]:
        """Token ids of "Document {i+1}:" (model.number_documents), cached per position."""
        cache = self.__dict__.setdefault("_label_cache", {})
        if i not in cache:
            lead = "" if self.prompt_style == "chat" else " "
            cache[i] = self.gen_tok(f"{lead}Document {i + 1}:", add_special_tokens=False)["input_ids"]
        return cache[i]

    def _prompt_parts(self, kind: str) -> tuple[list[int], list[int], list[int], list[int]]:
        """Token ids of the fixed pieces around documents and question: (before the documents, between the
        documents and the question, after the question, separator after each document). Cached: they
        depend only on the tokenizer and the kind."""
        cache = self.__dict__.setdefault("_prompt_cache", {})
        if kind in cache:
            return cache[kind]
        if kind not in PROMPT_SYSTEM:
            raise ValueError(f"prompt kind must be one of {sorted(PROMPT_SYSTEM)}, got {kind!r}")
        tok = self.gen_tok

        def enc(text: str) -> list[int]:
            return tok(text, add_special_tokens=False)["input_ids"] if text else []

        if self.prompt_style == "chat":
            tail = "Question: " if kind == "question" else ""
            messages = [{"role": "system", "content": PROMPT_SYSTEM[kind]},
                        {"role": "user", "content": f"Background:\n{_DOCS}\n{tail}{_QUERY}"}]
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            before, rest = text.split(_DOCS)
            between, after = rest.split(_QUERY)
            parts = (enc(before), enc(between), enc(after), enc("\n"))
        else:  # no chat template: the short plain prompt (tiny from-scratch generators in tests)
            # the from-scratch generator was trained with BOS first; a pretrained one gets what its tokenizer
            # itself puts before a text (SmolLM2: nothing; its BOS is the chat marker <|im_start|>)
            if self.generator_scratch:
                head = [tok.bos_token_id] if tok.bos_token_id is not None else []
            else:
                head = tok("", add_special_tokens=True)["input_ids"]
            between = " Question: " if kind == "question" else " Task: "
            parts = (head + enc("Background:"), enc(between.rstrip()), enc(" Answer:"), [])
        cache[kind] = parts
        return parts

    def _embed_prompt(self, ids, ph_mask, doc_embeddings):
        """Input embeddings of the prompt with the placeholders replaced by the documents [B, k, n, memory_dim]
        (projected into the generator's space where there is a projector)."""
        lm = self._generator_lm()
        emb = lm.get_input_embeddings()(ids)
        if doc_embeddings is not None and doc_embeddings.shape[1] > 0:
            docs = self._project(doc_embeddings.to(device=emb.device, dtype=self._param_dtype()))
            src = docs.to(emb.dtype).reshape(-1, emb.shape[-1])
            emb = emb.masked_scatter(ph_mask.unsqueeze(-1), src)  # fills placeholders row by row, in order
        return emb

    def _param_dtype(self) -> torch.dtype:
        return self.mem_embeddings.dtype

    def _placeholder_mask(self, ids: torch.Tensor, starts: list[list[int]], offsets: list[int]) -> torch.Tensor:
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, (row, off) in enumerate(zip(starts, offsets)):
            for s in row:
                mask[i, off + s : off + s + self.n_mem] = True
        return mask

    def answer_loss(self, questions, doc_embeddings, answers, answer_max_length=None, kinds=None, contexts=None):
        """Mean cross-entropy on answer tokens (+EOS) given question and docs [B, k, n, memory_dim] (or None).

        answer_max_length: an int, or one int per row (stage 1 mixes short QA answers and long paraphrases).
        kinds: per row "question" (default) or "instruction" (the row's `question` is an instruction).
        contexts: per row the documents' raw texts in place of compressed ones (doc_embeddings None): the
        full-text generator, tuned the same way (benchmarks/oracle_text_tuned.py)."""
        self._use_adapter("generator")
        tok = self.gen_tok
        amax = answer_max_length or self.answer_max_length
        amax = list(amax) if isinstance(amax, (list, tuple)) else [amax] * len(answers)  # per-row limits
        kinds = list(kinds) if kinds is not None else ["question"] * len(answers)
        k = 0 if doc_embeddings is None else doc_embeddings.shape[1]
        lead = "" if self.prompt_style == "chat" else " "
        seqs, labels, starts = [], [], []
        for i, (q, a, m, kind) in enumerate(zip(questions, answers, amax, kinds)):
            prompt, ph_starts = self._prompt_ids(q, k, kind=kind, context=None if contexts is None else contexts[i])
            ph_starts = ph_starts if contexts is None else []  # text in those slots, nothing to replace
            ans = tok(lead + a.strip(), add_special_tokens=False, truncation=True, max_length=int(m))["input_ids"]
            ans = ans + [tok.eos_token_id]
            seqs.append(prompt + ans)
            labels.append([-100] * len(prompt) + ans)
            starts.append(ph_starts)
        ids, attn = _pad(seqs, tok.pad_token_id)
        lab, _ = _pad(labels, -100)
        ph_mask = self._placeholder_mask(ids, starts, [0] * len(seqs))
        device = self.mem_embeddings.device
        ids, attn, lab, ph_mask = ids.to(device), attn.to(device), lab.to(device), ph_mask.to(device)
        emb = self._embed_prompt(ids, ph_mask, doc_embeddings)
        # the LM head runs over the answer positions only: over a 49k vocabulary the prompt's logits would
        # cost as much as the rest of the generator and are never read
        first = int((lab != -100).float().argmax(1).min()) if bool((lab != -100).any()) else 0
        keep = max(1, ids.shape[1] - max(first - 1, 0))
        logits = self._generator_lm()(inputs_embeds=emb, attention_mask=attn, logits_to_keep=keep).logits
        target = lab[:, ids.shape[1] - keep + 1:]
        loss = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100
        )
        return loss, int((lab != -100).sum())

    @torch.no_grad()
    def generate(self, questions, doc_embeddings, max_new_tokens: int = 16, batch_size: int = 32,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None, contexts: list[list[str]] | None = None,
                 base_generator: bool = False) -> list[str]:
        """Answers, greedy or sampled, with a KV cache.

        doc_embeddings: [B, k, n_mem, d] compressed documents, or None (closed book, or `contexts`).
        contexts: per question, raw document texts for the full-text baseline (then doc_embeddings is None).
        do_sample: sample from softmax(logits / temperature) within the top_p nucleus; `seed` makes it
        repeatable.
        base_generator: generate with the pretrained generator as it was, its LoRA adapter switched off (the
        paper's full-text baseline); a from-scratch generator has no such state and answers as trained."""
        if contexts is not None and doc_embeddings is not None:
            raise ValueError("give compressed doc_embeddings or raw-text contexts, not both")
        if do_sample and temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")
        sampler = None
        if do_sample:
            sampler = torch.Generator(device=self.mem_embeddings.device)
            sampler.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
        with self._eval_mode(), self._base_generator(base_generator):
            out = []
            for i in range(0, len(questions), batch_size):
                docs = None if doc_embeddings is None else doc_embeddings[i : i + batch_size]
                ctx = None if contexts is None else contexts[i : i + batch_size]
                out += self._generate_batch(list(questions[i : i + batch_size]), docs, max_new_tokens, ctx,
                                            sampler, float(temperature), float(top_p))
            return out

    def _next_token(self, logits: torch.Tensor, sampler, temperature: float, top_p: float) -> torch.Tensor:
        if sampler is None:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:  # nucleus: keep the smallest set of tokens whose probability reaches top_p
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p >= top_p
            sorted_p = sorted_p.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=sampler).squeeze(-1)

    def _generate_batch(self, questions, doc_embeddings, max_new_tokens, contexts=None, sampler=None,
                        temperature=1.0, top_p=1.0):
        self._use_adapter("generator")
        tok, lm = self.gen_tok, self._generator_lm()
        device = self.mem_embeddings.device
        k = 0 if doc_embeddings is None else doc_embeddings.shape[1]
        prompts = [self._prompt_ids(q, k, None if contexts is None else contexts[i]) for i, q in enumerate(questions)]
        ids, attn = _pad([p for p, _ in prompts], tok.pad_token_id, left=True)  # left pad: all end together
        ph_mask = self._placeholder_mask(ids, [s if contexts is None else [] for _, s in prompts],
                                         [ids.shape[1] - len(p) for p, _ in prompts])
        ids, attn, ph_mask = ids.to(device), attn.to(device), ph_mask.to(device)
        emb = self._embed_prompt(ids, ph_mask, doc_embeddings)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        # logits of the last position only: the prompt's other logits are never read, and the LM head over
        # every prompt position was a quarter of the prefill on the embedded default (benchmarks/latency.py)
        res = lm(inputs_embeds=emb, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
        banned = set(self.mem_ids) | {tok.bos_token_id, tok.pad_token_id}
        banned = torch.tensor(sorted(i for i in banned if i is not None and i != tok.eos_token_id), device=device)
        done = torch.zeros(len(questions), dtype=torch.bool, device=device)
        new_tokens = []
        for step in range(max_new_tokens):
            logits = res.logits[:, -1].float()
            if len(banned):
                logits[:, banned[banned < logits.shape[-1]]] = float("-inf")
            nxt = self._next_token(logits, sampler, temperature, top_p)
            nxt = torch.where(done, torch.full_like(nxt, tok.eos_token_id), nxt)
            new_tokens.append(nxt)
            done = done | (nxt == tok.eos_token_id)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            # transformers 5.x renamed past_key_values to cache (the old name goes in 5.40); 4.x knows only the old
            kv = {"cache": res.cache} if "cache" in res else {"past_key_values": res.past_key_values}
            res = lm(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos, use_cache=True, **kv)
        answers = []
        for row in torch.stack(new_tokens, 1).tolist() if new_tokens else [[] for _ in questions]:
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            answers.append(tok.decode(row, skip_special_tokens=True).strip())
        return answers

    # ---- inference API: what index, benchmark and serving call -------------------------------------------

    @staticmethod
    def score(query_vectors: torch.Tensor, doc_vectors: torch.Tensor) -> torch.Tensor:
        """Cosine of flattened memory vectors: queries [Q, n, d] x documents [D, n, d] -> [Q, D].

        The same score stage 3 trains the query reasoner with, and the one the index searches by."""
        q = F.normalize(query_vectors.flatten(1).float(), dim=-1)
        d = F.normalize(doc_vectors.flatten(1).float(), dim=-1)
        return q @ d.T

    def retrieve(self, questions: list[str], doc_vectors: torch.Tensor, k: int,
                 batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k documents per question among doc_vectors [D, n, d] -> (indices [Q, k], scores [Q, k])."""
        scores = self.score(self.encode_queries(questions, batch_size), doc_vectors)
        top = torch.topk(scores, min(k, scores.shape[1]), dim=-1)
        return top.indices, top.values

    def answer(self, questions: list[str], doc_vectors: torch.Tensor | None, **generate_kwargs) -> list[str]:
        """Answer each question from its compressed documents [Q, k, n, d] (None = closed book)."""
        return self.generate(questions, doc_vectors, **generate_kwargs)

    @contextlib.contextmanager
    def _base_generator(self, on: bool):
        """Within: the generator without its LoRA adapter (a no-op when `on` is false or there is none)."""
        peft_model = None
        if on and self.mode == "shared":
            peft_model = self.backbone
        elif on and not self.generator_scratch:
            peft_model = self.generator
        if peft_model is None:
            yield
            return
        with peft_model.disable_adapter():
            yield
        self._restore_trainable()

    def answer_from_text(self, questions: list[str], contexts: list[list[str]], **generate_kwargs) -> list[str]:
        """The full-text baseline: answer each question from its raw documents (base_generator=True: with the
        pretrained generator, adapters off, as the paper's text baseline)."""
        if len(contexts) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        return self.generate(questions, None, contexts=contexts, **generate_kwargs)

    # ---- the three stage losses ----------------------------------------------------------------------------

    def stage1_loss(self, documents, questions, answers, answer_max_length=None, mse_weight: float = 0.0,
                    kinds=None):
        """SCP: from ONE compressed document, write its QA pairs / answer a question / paraphrase it, plus
        MSE(mean memory state, mean doc state)."""
        # The document side is a fixed target (the backbone without adapters), not a moving part: when the
        # adapter shapes both sides it can zero the loss by mapping every state, memory and document, to one
        # constant vector, after which all documents compress alike (seen on the embedded default).
        mem, mem_mean, doc_mean = self._encode(documents, self.doc_max_length, "compressor", base_target=True)
        mse = F.mse_loss(mem_mean.float(), doc_mean.float())
        lm_loss, n_tok = self.answer_loss(questions, mem.unsqueeze(1), answers, answer_max_length, kinds)
        loss = lm_loss + mse_weight * mse
        return loss, {"lm_loss": lm_loss.item(), "mse_loss": mse.item(), "answer_tokens": n_tok}

    def stage2_loss(self, questions, doc_embeddings, answers, contexts=None, reconstruction=None,
                    reconstruction_weight: float = 0.0):
        """Instruction tuning: answer from the question + k compressed docs [B, k, n, d] (or, with contexts and
        doc_embeddings None, from the k documents' text).

        reconstruction: stage-1 rows ({documents, questions, answers, answer_max_length}) asking for documents
        word for word, added with `reconstruction_weight`, so that learning to answer does not unlearn reading
        the memory tokens (measured: stage 2 alone takes the pretrained reading from 0.6 to 0.06-0.4 nats/token)."""
        lm_loss, n_tok = self.answer_loss(questions, doc_embeddings, answers, contexts=contexts)
        metrics = {"lm_loss": lm_loss.item(), "answer_tokens": n_tok}
        if reconstruction is None or reconstruction_weight <= 0:
            return lm_loss, metrics
        mem, _, _ = self._encode(reconstruction["documents"], self.doc_max_length, "compressor")
        rec_loss, _ = self.answer_loss(reconstruction["questions"], mem.unsqueeze(1), reconstruction["answers"],
                                       reconstruction["answer_max_length"], ["instruction"] * len(mem))
        metrics["reconstruction_loss"] = rec_loss.item()
        return lm_loss + reconstruction_weight * rec_loss, metrics

    def stage3_loss(self, questions, candidate_embeddings, answers, top_k: int, temperature: float = 1.0,
                    retrieval_pool=None, retrieval_positives=None, retrieval_weight: float = 0.0,
                    retrieval_temperature: float = 0.05):
        """Joint: query reasoner scores N candidates [B, N, n, d], straight-through top-k, answer loss (the
        official objective, alone when retrieval_weight is 0).

        retrieval_pool [M, n, d] with retrieval_positives [B, M] adds retrieval_weight x `retrieval_loss` of
        the same query vectors against that pool (a departure: see train.stage3.retrieval_weight)."""
        q = self.encode_queries_with_grad(questions)  # [B, n, d]
        candidate_embeddings = candidate_embeddings.to(device=q.device, dtype=q.dtype)  # cache is fp32 on CPU
        scores = F.cosine_similarity(q.flatten(1).unsqueeze(1), candidate_embeddings.flatten(2), dim=-1)  # [B, N]
        selection = straight_through_topk(scores, min(top_k, scores.shape[1]), temperature)  # [B, k, N]
        docs = torch.einsum("bkn,bnmd->bkmd", selection.to(candidate_embeddings.dtype), candidate_embeddings)
        lm_loss, n_tok = self.answer_loss(questions, docs, answers)
        metrics = {"lm_loss": lm_loss.item(), "answer_tokens": n_tok, "score_mean": scores.mean().item()}
        loss = lm_loss
        if retrieval_weight > 0 and retrieval_pool is not None:
            pool_scores = self.score(q, retrieval_pool.to(q.device))  # [B, M], float32 cosine as the index
            ret = retrieval_loss(pool_scores, retrieval_positives.to(q.device), retrieval_temperature)
            metrics["retrieval_loss"] = ret.item()
            loss = lm_loss + retrieval_weight * ret
        return loss, metrics, selection, scores

    def forward(self, stage: str, **batch):
        """Dispatch so a DeepSpeed engine can call the model: returns (loss, metrics)."""
        if stage == "stage1":
            return self.stage1_loss(**batch)
        if stage == "stage2":
            return self.stage2_loss(**batch)
        if stage == "stage3":
            loss, metrics, _, _ = self.stage3_loss(**batch)
            return loss, metrics
        raise ValueError(f"unknown stage {stage!r}")

    # ---- save / load ---------------------------------------------------------------------------------------

    def save(self, out_dir) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {n: p.detach().cpu().contiguous() for n, p in self._checkpoint_params().items()}
        save_file(state, str(out / "weights.safetensors"))
        if self.mode == "shared":
            self.enc_tok.save_pretrained(str(out / "tokenizer"))
        else:
            self.enc_tok.save_pretrained(str(out / "compressor_tokenizer"))
            self.gen_tok.save_pretrained(str(out / "generator_tokenizer"))
        meta = {
            "format": CHECKPOINT_FORMAT,
            "mode": self.mode,
            "model_cfg": self.model_cfg,
            "seed": self.seed,
            "n_mem": self.n_mem,
            "hidden_size": self.hidden_size,
            "memory_dim": self.memory_dim,
            "generator_scratch": self.generator_scratch,
            "base_paths": {
                key: resolve_model_path(self.model_cfg.get(key)) if self.model_cfg.get(key) else None
                for key in ("compressor_path", "generator_path", "backbone_path")
            },
            "weights": sorted(state),
        }
        (out / "clara_config.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path, dtype: str | None = None) -> "ClaraModel":
        """A saved model, in eval mode. dtype: cast it for inference ("bfloat16", "float16"; None or
        "float32" keeps the saved float32; "auto" is bfloat16 where it is native, see fast_bfloat16).
        bfloat16 roughly halves CPU latency on CPUs with AVX512-BF16 or AMX (benchmarks/latency.py) at the
        cost of a few changed answers, and is many times slower on AVX2-only CPUs; training stays float32."""
        torch_dtype = inference_dtype(dtype)
        path = Path(path)
        if not (path / "clara_config.json").is_file():
            raise FileNotFoundError(f"{path}: not a saved CLaRa model (no clara_config.json); give a folder the "
                                    f"lineage wrote, e.g. artifacts/clara_model")
        meta = json.loads((path / "clara_config.json").read_text())
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
        model = cls(meta["model_cfg"], seed=meta.get("seed", 0), _saved_dir=path)
        state = load_file(str(path / "weights.safetensors"))
        params = model._checkpoint_params()
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"{path}: checkpoint mismatch; missing={missing[:5]} unexpected={unexpected[:5]}")
        with torch.no_grad():
            for name, p in params.items():
                if state[name].shape != p.shape:
                    raise ValueError(f"{path}: {name} has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}")
                p.copy_(state[name])
        if torch_dtype is not None and torch_dtype != torch.float32:
            model.to(torch_dtype)
        model.eval()
        return model
