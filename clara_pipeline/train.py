"""Training loops for CLaRa's three stages, through DeepSpeed (or plain PyTorch for debugging).

stage1 (SCP): compressor pretraining, answer/paraphrase from ONE compressed doc + MSE alignment.
stage2: instruction tuning, answer from the question + top_k compressed docs (gold first, then negatives).
stage3: joint training, the query reasoner picks top_k of N candidates with straight-through top-k and
        only the answer loss trains it.

When the compressor is frozen (stage2 train_compressor=false, stage3 freeze_compressor=true) every needed
document is compressed once up front and cached: on 2 CPU cores that turns ~1.5 s/step into ~0.3 s/step.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import time
from pathlib import Path

import torch

from .config import project_root
from .model import ClaraModel

PARAPHRASE_INSTRUCTION = "Paraphrase:"


# ----------------------------------------------------------------------------------------------------------
# distributed / DeepSpeed setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_distributed() -> None:
    """One process group per process: several stages run in one process and must not re-initialise it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if not torch.cuda.is_available() and os.environ["WORLD_SIZE"] == "1":
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (about a minute, and it
        # needs a C++ compiler) at init; a single process has no peer to share memory with, so skip it.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def load_deepspeed_config(train_cfg: dict, batch_size: int) -> dict:
    path = Path(train_cfg.get("deepspeed_config", "configs/deepspeed/cpu.json"))
    if not path.is_absolute():
        path = project_root() / path
    cfg = json.loads(path.read_text())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg["train_micro_batch_size_per_gpu"] = int(batch_size)
    if cfg.get("gradient_accumulation_steps", "auto") == "auto":
        cfg["gradient_accumulation_steps"] = 1
    cfg["train_batch_size"] = int(batch_size) * int(cfg["gradient_accumulation_steps"]) * world
    for key, value in list(cfg.items()):  # any other "auto" left: let DeepSpeed use its default
        if value == "auto":
            del cfg[key]
    return cfg


# ----------------------------------------------------------------------------------------------------------
# data


def _doc_text(record: dict, documents: dict[str, str]) -> str:
    for key in ("document", "doc_text", "text"):
        if record.get(key):
            return record[key]
    return documents[record["doc_id"]]


def _stage_docs(record: dict, documents: dict, k: int, rng: random.Random) -> list[str] | None:
    """Gold docs, then the first non-gold candidates, k in all, shuffled (so position says nothing)."""
    gold = [d for d in record.get("gold_doc_ids", []) if d in documents]
    negatives = [d for d in record.get("candidate_doc_ids", []) if d in documents and d not in gold]
    ids = (gold + negatives)[:k]
    if len(ids) < k:
        return None
    rng.shuffle(ids)
    return ids


class _Sampler:
    """Epoch-wise shuffled batches of indices, reproducible from the seed."""

    def __init__(self, n: int, batch_size: int, rng: random.Random):
        self.n, self.bs, self.rng, self.order = n, batch_size, rng, []

    def next(self) -> list[int]:
        out = []
        while len(out) < self.bs:
            if not self.order:
                self.order = list(range(self.n))
                self.rng.shuffle(self.order)
            out.append(self.order.pop())
        return out


def _lr_lambda(steps: int, warmup_frac: float = 0.06, final_frac: float = 0.1):
    warmup = max(1, int(steps * warmup_frac))

    def f(step: int) -> float:  # linear warmup, then linear decay to final_frac of the peak
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return max(final_frac, 1.0 - (1.0 - final_frac) * progress)

    return f


# ----------------------------------------------------------------------------------------------------------
# the loop


def train_stage(
    model: ClaraModel,
    stage: str,
    records: list[dict],
    documents: dict[str, str],
    stage_cfg: dict,
    train_cfg: dict,
    seed: int = 0,
    log_fn=None,
) -> dict:
    if stage not in ("stage1", "stage2", "stage3"):
        raise ValueError(f"unknown stage {stage!r}")
    if not records:
        raise ValueError(f"{stage}: no training records")
    torch.set_num_threads(int(train_cfg.get("num_threads") or len(os.sched_getaffinity(0))))
    random.seed(seed)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    steps = int(stage_cfg.get("steps", 100))
    bs = int(stage_cfg.get("batch_size", 16))
    lr = float(stage_cfg.get("lr", 1e-4))
    top_k = int(stage_cfg.get("top_k", 3))

    # ---- what trains in this stage
    if stage == "stage1":
        parts = {"compressor", "generator"}
        frozen_compressor = False
    elif stage == "stage2":
        frozen_compressor = not bool(stage_cfg.get("train_compressor", False))
        parts = {"generator"} | (set() if frozen_compressor else {"compressor"})
    else:
        frozen_compressor = bool(stage_cfg.get("freeze_compressor", True))
        parts = {"query", "generator"} | (set() if frozen_compressor else {"compressor"})
    params = model.set_trainable(parts)
    n_trainable = sum(p.numel() for p in params)

    # ---- per-record document ids (stage 2: gold + negatives, stage 3: the N candidates)
    if stage == "stage2":
        data = [(r, _stage_docs(r, documents, top_k, rng)) for r in records]
    elif stage == "stage3":
        cands = [[d for d in r.get("candidate_doc_ids", []) if d in documents] for r in records]
        # every row of a batch needs the same N: use the most common candidate count, drop shorter lists
        lens = [len(c) for c in cands]
        n_cand = int(stage_cfg.get("num_candidates") or max(set(lens), key=lambda n: (lens.count(n), n)))
        if n_cand < top_k:
            raise ValueError(f"stage3: records have {n_cand} known candidates, fewer than top_k={top_k}")
        data = [(r, c[:n_cand]) if len(c) >= n_cand else (r, None) for r, c in zip(records, cands)]
    else:
        data = [(r, None) for r in records]
    data = [(r, ids) for r, ids in data if stage == "stage1" or ids is not None]
    if not data:
        raise ValueError(f"{stage}: no record has {top_k} documents found in `documents`")

    cache = None
    if frozen_compressor:
        needed = sorted({d for _, ids in data for d in ids})
        vecs = model.compress([documents[d] for d in needed], batch_size=32).to(device)
        cache = {d: vecs[i] for i, d in enumerate(needed)}

    def doc_tensor(id_lists: list[list[str]]) -> torch.Tensor:  # -> [B, k, n, d]
        B, k = len(id_lists), len(id_lists[0])
        if cache is not None:
            return torch.stack([torch.stack([cache[d] for d in ids]) for ids in id_lists])
        flat = model.compress_with_grad([documents[d] for ids in id_lists for d in ids])
        return flat.view(B, k, model.n_mem, -1)

    def make_batch(idx: list[int]) -> dict:
        batch = [data[i] for i in idx]
        recs = [r for r, _ in batch]
        questions = [r.get("question") or "" for r in recs]
        # stage-1 records carry one target; question records (stages 2/3) a list of gold aliases
        answers = [r["answer"] if "answer" in r else r["answers"][0] for r in recs]
        if stage == "stage1":
            para = [r.get("data_type") == "paraphrase" for r in recs]
            return dict(
                documents=[_doc_text(r, documents) for r in recs],
                questions=[q or PARAPHRASE_INSTRUCTION if p else q for q, p in zip(questions, para)],
                answers=answers,
                answer_max_length=[
                    int(stage_cfg.get("paraphrase_max_length", 48)) if p else model.answer_max_length for p in para
                ],
                mse_weight=float(stage_cfg.get("mse_weight", 0.0)),
            )
        docs = doc_tensor([ids for _, ids in batch])
        if stage == "stage2":
            return dict(questions=questions, doc_embeddings=docs, answers=answers)
        return dict(
            questions=questions, candidate_embeddings=docs, answers=answers,
            top_k=top_k, temperature=float(stage_cfg.get("temperature", 1.0)),
        )

    # ---- optimizer: DeepSpeed engine or plain AdamW
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=float(stage_cfg.get("weight_decay", 0.0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps))
    backend = train_cfg.get("backend", "deepspeed")
    if backend == "deepspeed":
        import deepspeed

        _ensure_distributed()
        ds_cfg = load_deepspeed_config(train_cfg, bs)
        engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
        )
    elif backend == "torch":
        engine = None
    else:
        raise ValueError(f"train.backend must be 'deepspeed' or 'torch', got {backend!r}")

    model.train()
    sampler = _Sampler(len(data), bs, rng)
    log_every = int(stage_cfg.get("log_every", max(1, min(10, steps // 30))))
    rank0 = _is_rank0()
    losses, t0 = [], time.time()
    for step in range(steps):
        t_step = time.time()
        lr_now = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler moves it in step())
        batch = make_batch(sampler.next())
        if engine is not None:
            loss, metrics = engine(stage=stage, **batch)
            engine.backward(loss)
            engine.step()
        else:
            loss, metrics = model(stage=stage, **batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
        loss_value = float(loss.item())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{stage}: loss became {loss_value} at step {step}")
        losses.append(loss_value)
        if log_fn is not None and rank0 and (step % log_every == 0 or step == steps - 1):
            dt = max(time.time() - t_step, 1e-9)
            logged = {"loss": loss_value, "lr": lr_now, "step_seconds": dt,
                      "tokens_per_s": metrics.get("answer_tokens", 0) / dt, "samples_per_s": bs / dt}
            logged.update({k: float(v) for k, v in metrics.items() if k != "answer_tokens"})
            log_fn(step, logged)

    seconds = time.time() - t0
    if "compressor" in parts:
        # the query reasoner starts as a copy of the compressor (paper); it is only trained in stage 3, so
        # re-copy whenever the compressor has moved, or stage 3 would start from an untrained query encoder
        model.init_query_from_compressor()
    tail = losses[-max(1, min(10, len(losses))):]
    return {
        "stage": stage,
        "backend": backend,
        "steps": steps,
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "mean_loss": sum(losses) / len(losses),
        "seconds": seconds,
        "seconds_per_step": seconds / max(1, steps),
        "trainable_params": n_trainable,
        "records": len(data),
        "cached_documents": 0 if cache is None else len(cache),
    }
