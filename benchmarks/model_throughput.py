"""Training and compression throughput of the project's code against plain PyTorch on the same model.

    .venv/bin/python benchmarks/model_throughput.py              # embedded default (params.yaml)
    .venv/bin/python benchmarks/model_throughput.py --qwen2-0.5b # + a ~0.5B random-init Qwen2 in shared mode

Two ratios, each from one run:
- training: tokens/s of one stage-1 step through ``clara_pipeline.train.Stepper`` (the DeepSpeed engine the
  pipeline uses) / tokens/s of a hand-written PyTorch loop (forward, backward, clip, AdamW) on an identical
  copy of the model and the same batch. Goal >= 1.0: the engine adds no overhead.
- compression: documents/s of ``ClaraModel.compress`` (tokenise, write memory-token rows, encode, project)
  / documents/s of the bare backbone forward pass over the same pre-tokenised [doc + memory] sequences.
  Goal >= 0.9. The same for a whole index build (``index.build_index``: compress, faiss, write, publish).

The two sides are timed in alternating rounds and the median round is reported, so a background process
slows both sides alike instead of biasing the ratio. Nothing here is a test: it prints what it measured.
With CUDA the --qwen2-0.5b run uses bf16 and configs/deepspeed/gpu_zero2_bf16.json and also prints MFU.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLARA_ROOT", str(ROOT))

from clara_pipeline.config import load_params  # noqa: E402
from clara_pipeline.corpus import generate_corpus  # noqa: E402
from clara_pipeline.model import ClaraModel, _pad  # noqa: E402
from clara_pipeline.synthesis import OfflineSynthesizer, build_stage1_records  # noqa: E402
from clara_pipeline.train import PARAPHRASE_INSTRUCTION, Stepper  # noqa: E402

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, no sparsity


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def stage1_batch(params: dict, batch_size: int) -> dict:
    corpus = generate_corpus(params["corpus"], params["seed"])
    records, _ = build_stage1_records(corpus["documents"], OfflineSynthesizer(params["seed"]),
                                      params["scp"]["max_qa_per_doc"], params["scp"]["paraphrases_per_doc"])
    qa = [r for r in records if r["data_type"] == "qa"][: batch_size - batch_size // 4]
    para = [r for r in records if r["data_type"] == "paraphrase"][: batch_size // 4]
    rows = qa + para
    return dict(
        documents=[r["doc"] for r in rows],
        questions=[r["question"] or PARAPHRASE_INSTRUCTION for r in rows],
        answers=[r["answer"] for r in rows],
        answer_max_length=[params["train"]["stage1"].get("paraphrase_max_length", 48) if r["data_type"] == "paraphrase"
                           else int(params["model"]["answer_max_length"]) for r in rows],
        mse_weight=float(params["train"]["stage1"]["mse_weight"]),
    ), corpus["documents"]


def tokens_in(model: ClaraModel, batch: dict) -> int:
    """Positions the step runs through a network: encoder (doc + memory tokens) + generator (prompt + answer)."""
    enc = model.enc_tok(batch["documents"], add_special_tokens=False, truncation=True,
                        max_length=model.doc_max_length)["input_ids"]
    prefix, suffix = model._wrap_ids()
    n = sum(len(prefix) + len(e) + model.n_mem + len(suffix) for e in enc)
    for q, a, m in zip(batch["questions"], batch["answers"], batch["answer_max_length"]):
        prompt, _ = model._prompt_ids(q, 1)
        ans = model.gen_tok(" " + a, add_special_tokens=False, truncation=True, max_length=int(m))["input_ids"]
        n += len(prompt) + len(ans) + 1
    return n


def bench_training(model_cfg: dict, params: dict, batch: dict, train_cfg: dict, rounds: int, steps_per_round: int,
                   corpus_texts=None, dtype=None) -> dict:
    project = ClaraModel.from_params(model_cfg, corpus_texts=corpus_texts, seed=0)
    plain = copy.deepcopy(project)  # identical weights; get_peft_model already ran, so deepcopy is safe
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stage_cfg = dict(params["train"]["stage1"], batch_size=len(batch["documents"]))
    tokens = tokens_in(project, batch)

    project.to(device)
    p_params = project.set_trainable({"compressor", "generator"})
    stepper = Stepper(project, p_params, stage_cfg, train_cfg, steps=10_000)
    plain.to(device)
    q_params = plain.set_trainable({"compressor", "generator"})
    opt = torch.optim.AdamW(q_params, lr=float(stage_cfg["lr"]))
    for m in (project, plain):  # both pay the MSE target once, outside the timing (as train_stage does)
        m.train()
        m.prepare_doc_targets(batch["documents"])

    autocast = torch.autocast("cuda", dtype=dtype) if (dtype is not None and device.type == "cuda") else None

    def plain_step():
        if autocast is not None:
            with autocast:
                loss, _ = plain.stage1_loss(**batch)
        else:
            loss, _ = plain.stage1_loss(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(q_params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def project_step():
        stepper.step("stage1", [batch])

    for fn in (project_step, plain_step):  # warm-up: allocator, kernels, DeepSpeed's first step
        fn()
    times = {"project": [], "plain": []}
    for _ in range(rounds):
        for name, fn in (("project", project_step), ("plain", plain_step)):
            _sync()
            t = time.perf_counter()
            for _ in range(steps_per_round):
                fn()
            _sync()
            times[name].append((time.perf_counter() - t) / steps_per_round)
    sec = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in project.parameters())
    return {"tokens_per_step": tokens, "project_s": sec["project"], "plain_s": sec["plain"],
            "project_tok_s": tokens / sec["project"], "plain_tok_s": tokens / sec["plain"],
            "ratio": sec["plain"] / sec["project"], "params": n_params,
            "trainable": sum(p.numel() for p in p_params)}


@torch.no_grad()
def bench_compression(model: ClaraModel, texts: list[str], batch_size: int, rounds: int) -> dict:
    model.eval()
    body = model._encoder_body()
    device = model.mem_embeddings.device
    prefix, suffix = model._wrap_ids()
    pieces = model.enc_tok(texts, add_special_tokens=False, truncation=True, max_length=model.doc_max_length)["input_ids"]
    batches = []
    for i in range(0, len(texts), batch_size):  # pre-tokenised [doc + memory tokens]: the bare forward's input
        ids, attn = _pad([prefix + p + model.mem_ids + suffix for p in pieces[i:i + batch_size]], model.enc_tok.pad_token_id)
        batches.append((ids.to(device), attn.to(device)))

    def raw():
        with model._encoder_peft().disable_adapter():
            for ids, attn in batches:
                body(input_ids=ids, attention_mask=attn)

    def ours():
        model.compress(texts, batch_size=batch_size)

    docs = [{"id": f"d{i}", "title": "", "text": t} for i, t in enumerate(texts)]
    work = Path(tempfile.mkdtemp(prefix="clara-bench-index-"))

    def index_build():  # the compressed_index stage's work: compress, faiss, write, publish a version
        from clara_pipeline.index import build_index

        build_index(model, docs, work / "index", batch_size=batch_size, compressor_id="bench")

    raw(), ours()
    times = {"ours": [], "raw": [], "index": []}
    for _ in range(rounds):
        for name, fn in (("ours", ours), ("raw", raw), ("index", index_build)):
            _sync()
            t = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - t)
    sec = {k: statistics.median(v) for k, v in times.items()}
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return {"docs": len(texts), "ours_docs_s": len(texts) / sec["ours"], "raw_docs_s": len(texts) / sec["raw"],
            "ratio": sec["raw"] / sec["ours"], "index_docs_s": len(texts) / sec["index"],
            "index_ratio": sec["raw"] / sec["index"]}


def qwen2_backbone(out: Path, vocab_texts: list[str]) -> Path:
    """A ~0.5B Qwen2 (Qwen2.5-0.5B's shape), random-init, with a small trained tokenizer (no download)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from clara_pipeline.tokenizer import build_generator_tokenizer

    tok = build_generator_tokenizer(vocab_texts, 8000)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None, help="default: params.yaml train.stage1.batch_size")
    ap.add_argument("--compress-docs", type=int, default=256)
    ap.add_argument("--qwen2-0.5b", dest="qwen2", action="store_true",
                    help="also train a ~0.5B Qwen2 in shared mode (bf16 + ZeRO-2 on a GPU)")
    args = ap.parse_args()

    params = load_params(ROOT / "params.yaml")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    bs = args.batch_size or int(params["train"]["stage1"]["batch_size"])
    batch, documents = stage1_batch(params, bs)
    texts = [d["text"] for d in documents][: args.compress_docs]
    corpus_texts = [d["text"] for d in documents] + [q for q in batch["questions"]] + batch["answers"]
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {device}; torch {torch.__version__}; batch {bs}; rounds {args.rounds} x {args.steps_per_round} steps\n")

    rows = []
    train_cfg = dict(params["train"])
    tr = bench_training(params["model"], params, batch, train_cfg, args.rounds, args.steps_per_round, corpus_texts)
    rows.append(("embedded default (MiniLM + Llama-4L, separate)", tr))
    model = ClaraModel.from_params(params["model"], corpus_texts=corpus_texts, seed=0)
    comp = [("embedded default", bench_compression(model, texts, int(params["index"]["batch_size"]), args.rounds))]

    if args.qwen2:
        with tempfile.TemporaryDirectory() as tmp:
            path = qwen2_backbone(Path(tmp) / "qwen2", corpus_texts)
            cuda = torch.cuda.is_available()
            cfg = dict(params["model"], mode="shared", backbone_path=str(path), dtype="bfloat16" if cuda else "float32")
            q_train = dict(train_cfg, deepspeed_config="configs/deepspeed/gpu_zero2_bf16.json" if cuda
                           else train_cfg["deepspeed_config"])
            q_rounds, q_steps = (args.rounds, args.steps_per_round) if cuda else (1, 1)
            tr_q = bench_training(cfg, params, batch, q_train, q_rounds, q_steps,
                                  dtype=torch.bfloat16 if cuda else None)
            rows.append(("Qwen2 ~0.5B random-init, shared, " + ("bf16 ZeRO-2" if cuda else "fp32 CPU"), tr_q))
            qm = ClaraModel.from_params(cfg, seed=0).to("cuda" if cuda else "cpu")
            comp.append(("Qwen2 ~0.5B", bench_compression(qm, texts[:64], 32, max(1, q_rounds))))

    print("| training step (stage 1) | params | tokens/step | project tok/s | plain PyTorch tok/s | ratio |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['params'] / 1e6:.1f}M ({r['trainable'] / 1e6:.2f}M trained) | {r['tokens_per_step']} "
              f"| {r['project_tok_s']:.0f} | {r['plain_tok_s']:.0f} | {r['ratio']:.2f}x |")
    print("\n| compression | docs | ClaraModel.compress docs/s | index build docs/s | bare backbone forward docs/s "
          "| compress ratio | index build ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, r in comp:
        print(f"| {name} | {r['docs']} | {r['ours_docs_s']:.1f} | {r['index_docs_s']:.1f} | {r['raw_docs_s']:.1f} "
              f"| {r['ratio']:.2f}x | {r['index_ratio']:.2f}x |")
    if torch.cuda.is_available():
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in torch.cuda.get_device_name()), None)
        for name, r in rows:
            # per token: forward 2N + input gradients 2N over all N weights, weight gradients 2N only for
            # the trained ones (LoRA leaves the base frozen), i.e. 4N + 2N_trained instead of the usual 6N
            flops = (4 * r["params"] + 2 * r["trainable"]) * r["project_tok_s"]
            print(f"\n{name}: {flops / 1e12:.1f} TFLOP/s model FLOPs (4N + 2N_trained per token)"
                  + (f", MFU {flops / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16" if peak else ""))


if __name__ == "__main__":
    main()
