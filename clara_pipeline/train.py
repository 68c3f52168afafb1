"""Training loops for CLaRa's three stages, through DeepSpeed (or plain PyTorch for debugging).

stage1 (SCP): compressor pretraining: from ONE compressed doc, write all its QA pairs or a paraphrase
        (stage1_examples) + MSE alignment.
stage2: instruction tuning, answer from the question + top_k compressed docs (gold first, then negatives).
stage3: joint training, the query reasoner picks top_k of N candidates with straight-through top-k and
        only the answer loss trains it.

One step = one optimizer update over ``gradient_accumulation_steps`` micro-batches of ``batch_size`` rows
per process; under a launcher (``deepspeed`` or ``torchrun``) every process draws the same global batch
from the same seeded sampler and trains on its own slice, so the global batch is batch_size x accumulation
x world size, as DeepSpeed counts it.

Long runs survive a kill: every ``checkpoint_every`` steps the trainable weights, the optimizer, the
scheduler, the sampler's position and every RNG are saved (DeepSpeed's own checkpoint, so ZeRO-partitioned
optimizer states work on many GPUs); ``train_stage`` given the same ``checkpoint_dir`` continues from the
latest one and produces the same loss curve as a run that was never interrupted (tests/test_train.py kills
one to check). A checkpoint left by a different configuration or data is never resumed: its fingerprint
would not match.

When the compressor is frozen (stage2 train_compressor=false, stage3 freeze_compressor=true) every needed
document is compressed once up front and cached: on 2 CPU cores that turns ~1.5 s/step into ~0.3 s/step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import socket
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import project_root
from .model import ClaraModel, inference_dtype

# Say which accelerator DeepSpeed is on, or it warns "Setting accelerator to CPU" at its first use (which
# transformers/peft may trigger while building the model, before a training stage starts).
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

PARAPHRASE_INSTRUCTION = "Paraphrase:"  # target_form "question": the instruction of a paraphrase row
# target_form "official" (the official CLaRa stage 1): from the memory tokens alone, with no question in the
# prompt, the generator writes ALL of a document's QA pairs, or a paraphrase under one of several wordings
QA_ALL_INSTRUCTION = "Write questions that cover all key information of the background and answer each one."
PARAPHRASE_INSTRUCTIONS = (
    "Paraphrase the background.",
    "Rewrite the background in your own words.",
    "Restate the background, keeping every fact.",
    "Say the same as the background with different wording.",
    "Reword the background without losing any detail.",
)
RECONSTRUCT_INSTRUCTION = "Repeat the background word for word."
# settings that change how a run is saved or shown, not what it computes: they stay out of the fingerprint
_BOOKKEEPING_KEYS = {"checkpoint_every", "keep_checkpoints", "log_every", "num_threads"}


# ----------------------------------------------------------------------------------------------------------
# distributed / DeepSpeed setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (1 outside a launcher)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_rank0() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _ensure_distributed() -> None:
    """One process group per process: several stages run in one process and must not re-initialise it.

    Under ``deepspeed``/``torchrun`` the launcher has set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT; alone, this process is rank 0 of 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if not torch.cuda.is_available() and os.environ.get("CLARA_DS_SHM_COMM") != "1":
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel at init (about a minute,
        # and it needs a C++ compiler). gloo does the same job without it; CLARA_DS_SHM_COMM=1 turns it on.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def load_deepspeed_config(train_cfg: dict, batch_size: int) -> dict:
    """The JSON config named in params.yaml, with the batch geometry filled in from params.yaml.

    params.yaml is the one place the batch is set: "auto" (or a missing key) takes its value, and a JSON
    value that contradicts it is an error rather than a silent override."""
    path = Path(train_cfg.get("deepspeed_config", "configs/deepspeed/cpu.json"))
    if not path.is_absolute():
        path = project_root() / path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no DeepSpeed config there (params.yaml train.deepspeed_config); "
                                f"point it at a JSON file such as configs/deepspeed/cpu.json")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); fix it or point "
                         f"train.deepspeed_config at another file") from None
    world = rank_and_world()[1]
    accum = int(train_cfg.get("gradient_accumulation_steps", 1))
    for key, want in (("train_micro_batch_size_per_gpu", int(batch_size)), ("gradient_accumulation_steps", accum)):
        have = cfg.get(key, "auto")
        if have != "auto" and int(have) != want:
            raise ValueError(f"{path}: {key}={have} contradicts params.yaml ({want}); set it to \"auto\"")
        cfg[key] = want
    cfg["train_batch_size"] = int(batch_size) * accum * world
    for key, value in list(cfg.items()):  # any other "auto" left: let DeepSpeed use its default
        if value == "auto":
            del cfg[key]
    return cfg


# ----------------------------------------------------------------------------------------------------------
# data


def _doc_text(record: dict, documents: dict[str, str]) -> str:
    for key in ("document", "doc_text", "text", "doc"):
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


def stage1_examples(records: list[dict], documents: dict[str, str], stage_cfg: dict, answer_max_length: int,
                    doc_max_length: int, seed: int) -> list[dict]:
    """Stage-1 training rows from the SCP records: {document, question, answer, kind, max_length}.

    target_form "official": one row per document holding all its QA pairs as "Question: q / Answer: a" lines
    (kind "instruction", no question in the prompt), one row per paraphrase with a seeded choice among
    PARAPHRASE_INSTRUCTIONS, and `reconstruction_per_doc` rows asking for the document itself.
    target_form "question": one row per QA pair with its question in the prompt, as before issue 11.
    target_form "reconstruction": only one row per document asking for it word for word (the pretraining
    phase on documents that are never evaluated; the records then only need to name their documents)."""
    form = stage_cfg.get("target_form", "official")
    if form not in ("official", "question", "reconstruction"):
        raise ValueError(f"train.stage1.target_form must be 'official', 'question' or 'reconstruction', got {form!r}")
    rng = random.Random(seed)
    if form == "reconstruction":
        return _reconstruction_rows(records, documents, doc_max_length)
    para_len = int(stage_cfg.get("paraphrase_max_length", 48))
    rows: list[dict] = []
    if form == "question":
        for r in records:
            para = r.get("data_type") == "paraphrase"
            rows.append({"document": _doc_text(r, documents),
                         "question": (r.get("question") or PARAPHRASE_INSTRUCTION) if para else r.get("question", ""),
                         "answer": r["answer"], "kind": "question",
                         "max_length": para_len if para else answer_max_length})
        return rows
    qa_by_doc: dict[str, list[dict]] = {}
    for r in records:
        text = _doc_text(r, documents)
        if r.get("data_type") == "paraphrase":
            rows.append({"document": text, "question": rng.choice(PARAPHRASE_INSTRUCTIONS), "answer": r["answer"],
                         "kind": "instruction", "max_length": para_len})
        else:
            qa_by_doc.setdefault(text, []).append(r)
    for text, qas in qa_by_doc.items():
        lines = "\n".join(f"Question: {r['question'].strip()}\nAnswer: {r['answer'].strip()}" for r in qas)
        rows.append({"document": text, "question": QA_ALL_INSTRUCTION, "answer": lines, "kind": "instruction",
                     "max_length": int(stage_cfg.get("qa_max_length", 128))})
    for _ in range(int(stage_cfg.get("reconstruction_per_doc", 0))):
        rows.extend(_reconstruction_rows(records, documents, doc_max_length))
    return rows


def _reconstruction_rows(records: list[dict], documents: dict[str, str], doc_max_length: int) -> list[dict]:
    """One row per distinct document of `records`, asking for it word for word, in a fixed order."""
    return [{"document": text, "question": RECONSTRUCT_INSTRUCTION, "answer": text, "kind": "instruction",
             "max_length": doc_max_length} for text in sorted({_doc_text(r, documents) for r in records})]


class _Sampler:
    """Epoch-wise shuffled batches of indices, reproducible from the seed, with a resumable position."""

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

    def state_dict(self) -> dict:
        return {"order": list(self.order), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.order = list(state["order"])
        self.rng.setstate(state["rng"])


def _lr_lambda(steps: int, warmup_frac: float = 0.06, final_frac: float = 0.1):
    warmup = max(1, int(steps * warmup_frac))

    def f(step: int) -> float:  # linear warmup, then linear decay to final_frac of the peak
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return max(final_frac, 1.0 - (1.0 - final_frac) * progress)

    return f


# ----------------------------------------------------------------------------------------------------------
# one optimizer step, the same for DeepSpeed and plain PyTorch


class Stepper:
    """Owns the optimizer (inside a DeepSpeed engine, or plain AdamW) and does one update per call.

    Kept apart from the data loop so that benchmarks/model_throughput.py times exactly this step."""

    def __init__(self, model: ClaraModel, params: list, stage_cfg: dict, train_cfg: dict, steps: int,
                 groups: list[dict] | None = None):
        """groups: optimizer parameter groups over `params` with their own "lr" (default: one group at
        stage_cfg's lr). The schedule scales every group's rate alike; `lr` reports the first group's."""
        self.model = model
        self.params = params
        self.accum = int(train_cfg.get("gradient_accumulation_steps", 1))
        if self.accum < 1:
            raise ValueError("train.gradient_accumulation_steps must be at least 1")
        lr = float(stage_cfg.get("lr", 1e-4))
        self.optimizer = torch.optim.AdamW(groups or params, lr=lr, weight_decay=float(stage_cfg.get("weight_decay", 0.0)))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(steps))
        self.backend = train_cfg.get("backend", "deepspeed")
        # train.autocast: run the forward under torch.autocast in this dtype while weights, gradients and the
        # optimizer stay float32. On a CPU with AVX512-BF16 bfloat16 took a SmolLM2 stage-1 step from ~18-25 s
        # to ~9-11 s (docs/embedded-default.md); on an AVX2-only CPU it is hundreds of times slower, so the
        # default "auto" takes it only where it is native; "none" or null = plain float32.
        self.autocast = autocast_dtype(train_cfg.get("autocast"))
        self.engine = None
        if self.backend == "deepspeed":
            import deepspeed

            _ensure_distributed()
            ds_cfg = load_deepspeed_config(train_cfg, int(stage_cfg.get("batch_size", 16)))
            self.grad_clip = float(ds_cfg.get("gradient_clipping", 0.0))
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, model_parameters=params, optimizer=self.optimizer, lr_scheduler=self.scheduler,
                config=ds_cfg,
            )
        elif self.backend == "torch":
            self.grad_clip = float(train_cfg.get("gradient_clipping", 1.0))
        else:
            raise ValueError(f"train.backend must be 'deepspeed' or 'torch', got {self.backend!r}")

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, stage: str, micro_batches: list[dict]) -> tuple[float, dict]:
        """Forward + backward over the micro-batches, then one optimizer update; returns the mean loss."""
        if len(micro_batches) != self.accum:
            raise ValueError(f"expected {self.accum} micro-batches, got {len(micro_batches)}")
        losses, metrics = [], {}
        for batch in micro_batches:
            if self.engine is not None:
                with self._autocast():
                    loss, metrics = self.engine(stage=stage, **batch)
                self.engine.backward(loss)  # scales by 1/accum and steps only at the boundary
                self.engine.step()
            else:
                with self._autocast():
                    loss, metrics = self.model(stage=stage, **batch)
                (loss / self.accum).backward()
            losses.append(float(loss.item()))
        if self.engine is None:
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return sum(losses) / len(losses), metrics

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=self.autocast)

    # ---- checkpoints: everything an exact resume needs -------------------------------------------------

    def save(self, directory: Path, tag: str, client_state: dict, keep: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.engine is not None:
            # every rank takes part (ZeRO shards optimizer state); frozen base weights are not saved
            self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state,
                                        exclude_frozen_parameters=True)
        elif is_rank0():
            tmp = directory / f".tmp-{tag}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            trainable = {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
            save_file(trainable, str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "client_state": client_state}, tmp / "state.pt")
            shutil.rmtree(directory / tag, ignore_errors=True)
            os.replace(tmp, directory / tag)
            _write_atomic(directory / "latest", tag)
        barrier()
        if is_rank0():  # keep the newest `keep` checkpoints
            tags = sorted(p.name for p in directory.glob("step-*") if p.is_dir())
            for old in tags[:-max(1, keep)]:
                shutil.rmtree(directory / old, ignore_errors=True)
        barrier()

    def load(self, directory: Path) -> dict:
        tag = (directory / "latest").read_text().strip()
        if self.engine is not None:
            path, client_state = self.engine.load_checkpoint(str(directory), tag=tag, load_module_strict=False)
            if path is None:
                raise RuntimeError(f"{directory}/{tag}: DeepSpeed could not load this checkpoint")
            return client_state
        state = load_file(str(directory / tag / "trainable.safetensors"))
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                named[name].copy_(tensor)
        # tensors, numbers and containers only: unpickling arbitrary objects from a checkpoint folder runs code
        saved = torch.load(directory / tag / "state.pt", weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        return saved["client_state"]


def autocast_dtype(name) -> torch.dtype | None:
    """params.yaml's train.autocast -> a torch dtype (None, "none" or "float32": no autocast; "auto": bfloat16
    where the machine has it natively, else none)."""
    return None if name in (None, "", "none", "float32") else inference_dtype(name)


def precision_note(dtype: torch.dtype | None, setting) -> str:
    """What a stage trains in, for its log: a user on a CPU without native bfloat16 learns there why it is slower."""
    if dtype is not None:
        return f"{str(dtype).replace('torch.', '')} autocast"
    if setting == "auto" and not torch.cuda.is_available():
        return ("float32 (train.autocast auto: this CPU has no native bfloat16, so steps take ~1.6x as long as on "
                "one with AVX512-BF16, docs/embedded-default.md)")
    return "float32"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def run_fingerprint(stage: str, records: list[dict], documents: dict[str, str], stage_cfg: dict,
                    train_cfg: dict, seed: int, model_cfg: dict, depends_on: str = "") -> str:
    """What a checkpoint was trained on and with: a resume only continues a run with the same one.

    depends_on: the fingerprint of the run that produced the starting weights (stage 2 starts from stage 1)."""
    h = hashlib.sha256()
    settings = {
        "stage": stage,
        "depends_on": depends_on,
        "seed": seed,
        "world": rank_and_world()[1],
        "stage_cfg": {k: v for k, v in stage_cfg.items() if k not in _BOOKKEEPING_KEYS},
        "train_cfg": {k: v for k, v in train_cfg.items() if k not in _BOOKKEEPING_KEYS | {"stage1", "stage2", "stage3"}},
        "model_cfg": model_cfg,
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for record in records:
        h.update(json.dumps(record, sort_keys=True, default=str).encode())
    for doc_id in sorted(documents):
        h.update(doc_id.encode() + b"\0" + documents[doc_id].encode())
    return h.hexdigest()[:16]


def _prepare_checkpoint_dir(directory: Path, fingerprint: str, log) -> bool:
    """True when `directory` holds a checkpoint of this very run to resume from; otherwise make it fresh."""
    marker = directory / "fingerprint.txt"
    resumable = marker.exists() and marker.read_text().strip() == fingerprint and (directory / "latest").exists()
    barrier()  # every rank decides before rank 0 touches the folder
    if not resumable and is_rank0():
        if directory.exists():
            log(f"{directory}: checkpoints from a different configuration or data; starting afresh")
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        _write_atomic(marker, fingerprint)
    barrier()
    return resumable


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
    checkpoint_dir: str | os.PathLike | None = None,
    depends_on: str = "",
    log=print,
    reconstruction_documents: dict[str, str] | None = None,
) -> dict:
    """Train one stage. With `checkpoint_dir`, save every `train.checkpoint_every` steps and at the end, and
    continue from the latest checkpoint of the same run (a finished one is loaded, not retrained).

    reconstruction_documents: for stage 2 with `reconstruction_weight` > 0, the documents whose word-for-word
    reconstruction rows (`reconstruction_batch_size` per micro-batch) ride along with every batch."""
    if stage not in ("stage1", "stage2", "stage3"):
        raise ValueError(f"unknown stage {stage!r}")
    if not records:
        raise ValueError(f"{stage}: no training records")
    # a launcher sets OMP_NUM_THREADS per process; alone, use every core this process may run on
    torch.set_num_threads(int(train_cfg.get("num_threads") or os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0))))
    random.seed(seed)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    steps = int(stage_cfg.get("steps", 100))
    bs = int(stage_cfg.get("batch_size", 16))
    top_k = int(stage_cfg.get("top_k", 3))

    # ---- what trains in this stage
    if stage == "stage1":
        parts = {"compressor", "generator"}
        frozen_compressor = False
    elif stage == "stage2":
        frozen_compressor = not bool(stage_cfg.get("train_compressor", True))
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
        data = [(r, None) for r in stage1_examples(records, documents, stage_cfg, model.answer_max_length,
                                                   model.doc_max_length, seed)]
    data = [(r, ids) for r, ids in data if stage == "stage1" or ids is not None]
    if not data:
        raise ValueError(f"{stage}: no record has {top_k} documents found in `documents`")

    rec_weight = float(stage_cfg.get("reconstruction_weight", 0.0)) if stage == "stage2" else 0.0
    rec_rows: list[dict] = []
    if rec_weight > 0:
        if not reconstruction_documents:
            raise ValueError("train.stage2.reconstruction_weight > 0 needs documents to reconstruct "
                             "(scp.pretraining_documents, or the corpus)")
        rec_rows = _reconstruction_rows([{"doc_id": d} for d in reconstruction_documents], reconstruction_documents,
                                        model.doc_max_length)
        rec_bs = int(stage_cfg.get("reconstruction_batch_size", max(1, bs // 2)))
        depends_on += "+reconstruction:" + hashlib.sha256("\0".join(r["document"] for r in rec_rows).encode()).hexdigest()[:16]

    mse_weight = float(stage_cfg.get("mse_weight", 0.0))
    if stage == "stage1" and mse_weight > 0:
        # the MSE target of every document, computed once in a fixed order: a resumed run then sees
        # bit-identical targets (batch composition would otherwise change the padding and the last bits)
        model.prepare_doc_targets(sorted({r["document"] for r, _ in data}))

    # stage 3's optional retrieval term (a departure from the official answer-loss-only objective): each
    # question's gold documents against a pool, the whole set of cached documents when the compressor is
    # frozen (on the embedded corpus every candidate list together covers the index), else the batch's own
    # candidate lists, compressed with grad
    ret_weight = float(stage_cfg.get("retrieval_weight", 0.0)) if stage == "stage3" else 0.0
    golds = [{d for d in r.get("gold_doc_ids", []) if d in documents} for r, _ in data] if ret_weight > 0 else []

    cache, pool, pool_row = None, None, {}
    if frozen_compressor:
        needed = sorted({d for _, ids in data for d in ids} | {d for g in golds for d in g})
        vecs = model.compress([documents[d] for d in needed], batch_size=32).to(device)
        cache = {d: vecs[i] for i, d in enumerate(needed)}
        if ret_weight > 0:
            pool, pool_row = vecs, {d: i for i, d in enumerate(needed)}

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
        # stage-1 rows carry one target; question records (stages 2/3) a list of gold aliases
        answers = [r["answer"] if "answer" in r else r["answers"][0] for r in recs]
        if stage == "stage1":
            return dict(documents=[r["document"] for r in recs], questions=questions, answers=answers,
                        answer_max_length=[r["max_length"] for r in recs], mse_weight=mse_weight,
                        kinds=[r["kind"] for r in recs])
        docs = doc_tensor([ids for _, ids in batch])
        if stage == "stage2":
            out = dict(questions=questions, doc_embeddings=docs, answers=answers)
            if rec_rows:
                rows = [rec_rows[i] for i in rec_sampler.next()[rank * rec_bs:(rank + 1) * rec_bs]]
                out.update(reconstruction_weight=rec_weight, reconstruction=dict(
                    documents=[r["document"] for r in rows], questions=[r["question"] for r in rows],
                    answers=[r["answer"] for r in rows], answer_max_length=[r["max_length"] for r in rows]))
            return out
        out = dict(questions=questions, candidate_embeddings=docs, answers=answers,
                   top_k=top_k, temperature=float(stage_cfg.get("temperature", 0.02)))
        if ret_weight > 0:
            if pool is not None:
                positives = torch.zeros(len(batch), len(pool_row), dtype=torch.bool)
                for b, i in enumerate(idx):
                    positives[b, [pool_row[d] for d in golds[i]]] = True
                out["retrieval_pool"] = pool
            else:
                flat_ids = [d for _, ids in batch for d in ids]
                positives = torch.tensor([[d in golds[i] for d in flat_ids] for i in idx], dtype=torch.bool)
                out["retrieval_pool"] = docs.flatten(0, 1)
            out.update(retrieval_positives=positives, retrieval_weight=ret_weight,
                       retrieval_temperature=float(stage_cfg.get("retrieval_temperature", 0.05)))
        return out

    groups = None
    if stage == "stage3" and stage_cfg.get("query_lr"):
        # the query reasoner at its own rate: the generator keeps `lr`, which a faster rate costs reading
        query = {id(p) for n, p in model.named_parameters() if p.requires_grad and model._part_of(n) == "query"}
        groups = [{"params": [p for p in params if id(p) not in query]},
                  {"params": [p for p in params if id(p) in query], "lr": float(stage_cfg["query_lr"])}]
    stepper = Stepper(model, params, stage_cfg, train_cfg, steps, groups)
    rank, world = rank_and_world()
    # every rank draws the same global batch and keeps its own slice (the sampler state is then one thing)
    sampler = _Sampler(len(data), bs * world, rng)
    rec_sampler = _Sampler(len(rec_rows), rec_bs * world, random.Random(seed + 1)) if rec_rows else None

    # ---- resume
    every = int(train_cfg.get("checkpoint_every", 0)) if checkpoint_dir is not None else 0
    start, losses, resumed_from = 0, [], None
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    fingerprint = run_fingerprint(stage, records, documents, stage_cfg, train_cfg, seed, model.model_cfg, depends_on)
    if ckpt is not None:
        if _prepare_checkpoint_dir(ckpt, fingerprint, log):
            client = stepper.load(ckpt)
            start, losses = int(client["step"]), list(client["losses"])
            sampler.load_state_dict(client["sampler"])
            if rec_sampler is not None:
                rec_sampler.load_state_dict(client["reconstruction_sampler"])
            _set_rng_state(client["rng"])
            resumed_from = start
            log(f"{stage}: resumed from {ckpt} at step {start} of {steps}")

    if rank == 0 and start < steps:
        log(f"{stage}: {steps - start} steps, forward in {precision_note(stepper.autocast, train_cfg.get('autocast'))}")
    model.train()
    log_every = int(stage_cfg.get("log_every", max(1, min(10, steps // 30))))
    rank0 = rank == 0
    t0 = time.time()
    for step in range(start, steps):
        t_step = time.time()
        lr_now = stepper.lr  # the rate this step uses (the scheduler moves it after the update)
        micro = [make_batch(sampler.next()[rank * bs:(rank + 1) * bs]) for _ in range(stepper.accum)]
        loss_value, metrics = stepper.step(stage, micro)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{stage}: loss became {loss_value} at step {step}")
        losses.append(loss_value)
        if log_fn is not None and rank0 and (step % log_every == 0 or step == steps - 1):
            dt = max(time.time() - t_step, 1e-9)
            logged = {"loss": loss_value, "lr": lr_now, "step_seconds": dt,
                      "tokens_per_s": metrics.get("answer_tokens", 0) * stepper.accum / dt,
                      "samples_per_s": bs * stepper.accum * world / dt}
            logged.update({k: float(v) for k, v in metrics.items() if k != "answer_tokens"})
            log_fn(step, logged)
        if every and ((step + 1) % every == 0 or step + 1 == steps):
            client = {"step": step + 1, "losses": losses, "sampler": sampler.state_dict(), "rng": _rng_state()}
            if rec_sampler is not None:
                client["reconstruction_sampler"] = rec_sampler.state_dict()
            stepper.save(ckpt, f"step-{step + 1:08d}", client, int(train_cfg.get("keep_checkpoints", 2)))

    seconds = time.time() - t0
    if "compressor" in parts:
        # the query reasoner starts as a copy of the compressor (paper); it is only trained in stage 3, so
        # re-copy whenever the compressor has moved, or stage 3 would start from an untrained query encoder
        model.init_query_from_compressor()
    tail = losses[-max(1, min(10, len(losses))):]
    return {
        "stage": stage,
        "backend": stepper.backend,
        "steps": steps,
        "gradient_accumulation_steps": stepper.accum,
        "world_size": world,
        "resumed_from_step": resumed_from,
        "fingerprint": fingerprint,
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "mean_loss": sum(losses) / len(losses),
        "losses": losses,
        "seconds": seconds,
        "seconds_per_step": seconds / max(1, steps - start),
        "trainable_params": n_trainable,
        "records": len(data),
        "reconstruction_records": len(rec_rows),
        "cached_documents": 0 if cache is None else len(cache),
    }
