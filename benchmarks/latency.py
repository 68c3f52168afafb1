"""Question-answering latency at batch size 1: compressed top-k (what CLaRa serves) vs full-text top-k.

    .venv/bin/python benchmarks/latency.py                 # artifacts of `make run` in this checkout
    .venv/bin/python benchmarks/latency.py --root /path/to/project --questions 50 --k 5

On the trained artifacts (artifacts/clara_model, artifacts/compressed_index, artifacts/raw_corpus), for the
first N evaluation questions, one question at a time, three paths through the same trained model:

- compressed (index): question -> query reasoner -> index search -> generator over k x n_mem memory
  vectors read from the index (precomputed offline). This is ``ClaraRAG.ask``.
- full text: the same question, query encoding and search, then the same generator over the k retrieved
  documents' raw text (``ClaraModel.answer_from_text``; each document cut to doc_max_length generator tokens,
  the budget the compressor reads).
- compressed at query time: as the first, but the k documents are compressed by ``ClaraModel.compress``
  per question instead of read from the index: what serving would cost without the offline index.
- no documents (floor): the same retrieval, then the generator over the prompt without any document: the
  fixed cost every path pays (not part of the goal).

Each path is timed from the question string to (1) the first generated token id and (2) the decoded answer.
Time to first token is measured with a hook, not a proxy: ``ClaraModel._next_token`` is wrapped on the
instance, and the clock is read when its first call returns, i.e. when the first token id exists (after the
prompt prefill; a CUDA device is synchronised first). Whole answer = until ``generate`` returns the decoded
string (greedy, stops at EOS or --max-new-tokens). The three paths alternate per question after a warm-up, so
background load slows them alike. One torch thread by default (--threads). Context positions = the generator input positions holding documents
(k x n_mem for compressed; the tokenised text for full text); prompt positions = the whole prompt.

Goal check: TTFT speed-up (full text / compressed, p50) >= 0.9 x the context-position ratio. Everything is
measured in this one run; nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
for _var, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _value)

import numpy as np  # noqa: E402
import torch  # noqa: E402

PATHS = ("compressed (index)", "full text", "compressed at query time", "no documents (floor)")


class FirstTokenClock:
    """Wraps ``model._next_token`` on the instance: time at which the first token id exists, and tokens made."""

    def __init__(self, model):
        self._inner = model._next_token
        model._next_token = self  # an instance attribute shadows the method; nn.Module keeps plain callables
        self.first: float | None = None
        self.tokens = 0

    def reset(self) -> None:
        self.first, self.tokens = None, 0

    def __call__(self, logits, *args, **kwargs):
        out = self._inner(logits, *args, **kwargs)
        if self.first is None:
            if out.is_cuda:
                torch.cuda.synchronize()
            self.first = time.perf_counter()
        self.tokens += 1
        return out


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="project root holding artifacts/ (default: this checkout)")
    parser.add_argument("--questions", type=int, default=50, help="evaluation questions to time (default 50)")
    parser.add_argument("--k", type=int, default=5, help="documents per question (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3, help="untimed questions first (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: batch-1 latency of a small model; on a shared 2-core "
                             "machine 2 threads oversubscribe and were ~40x slower; 0 = torch's choice)")
    args = parser.parse_args(argv)

    art = args.root / "artifacts"
    needed = [art / "clara_model", art / "compressed_index", art / "raw_corpus" / "questions_eval.jsonl"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print("benchmarks/latency.py needs the trained artifacts of the embedded default; missing:\n  "
              + "\n  ".join(missing) + f"\nRun `make run` in {args.root} first (or pass --root).", file=sys.stderr)
        return 1

    from clara_pipeline.inference import ClaraRAG
    from clara_pipeline.jsonl import read_jsonl

    if args.threads:
        torch.set_num_threads(args.threads)
    rag = ClaraRAG.load(art / "clara_model", art / "compressed_index")
    model, index = rag.model, rag.index
    model.eval()
    device = model.mem_embeddings.device
    questions = [q["question"] for q in read_jsonl(art / "raw_corpus" / "questions_eval.jsonl")]
    total = args.warmup + args.questions
    if len(questions) < total:
        print(f"note: {len(questions)} evaluation questions, fewer than {total}; reusing from the start", file=sys.stderr)
        questions = (questions * (total // max(len(questions), 1) + 1))
    questions = questions[:total]
    clock = FirstTokenClock(model)
    k, mnt = args.k, args.max_new_tokens

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(path: str, question: str) -> dict:
        clock.reset()
        t0 = time.perf_counter()
        scores, rows = rag.retrieve([question], k)  # query reasoner + index search
        t_ret = time.perf_counter()
        texts = [index.documents[r]["text"] for r in rows[0]]
        if path == "no documents (floor)":  # the generator's fixed cost: the same prompt without documents
            answer = model.answer([question], None, max_new_tokens=mnt, batch_size=1)[0]
            prompt, _ = model._prompt_ids(question, 0)
            context = 0
        elif path == "full text":
            answer = model.answer_from_text([question], [texts], max_new_tokens=mnt, batch_size=1)[0]
            prompt, _ = model._prompt_ids(question, k, texts)
            context = len(prompt) - len(model._prompt_ids(question, 0)[0])
        else:
            if path == "compressed (index)":
                memory = torch.from_numpy(index.embeddings(rows).astype(np.float32))
            else:
                memory = model.compress(texts, batch_size=k).unsqueeze(0)
            answer = model.answer([question], memory, max_new_tokens=mnt, batch_size=1)[0]
            prompt, _ = model._prompt_ids(question, k)
            context = memory.shape[1] * memory.shape[2]
        sync()
        t_end = time.perf_counter()
        return {"retrieval": (t_ret - t0) * 1e3, "ttft": (clock.first - t0) * 1e3,
                "gen_ttft": (clock.first - t_ret) * 1e3, "answer_ms": (t_end - t0) * 1e3,
                "context": context, "prompt": len(prompt), "tokens": clock.tokens, "answer": answer,
                "rows": rows[0].tolist()}

    results = {p: [] for p in PATHS}
    with torch.inference_mode():
        for i, question in enumerate(questions):
            order = PATHS if i % 2 == 0 else PATHS[::-1]  # alternate who goes first
            for path in order:
                r = run(path, question)
                if i >= args.warmup:
                    results[path].append(r)

    rows_equal = all(a["rows"] == b["rows"] for a, b in zip(results[PATHS[0]], results[PATHS[1]]))
    same_answer = statistics.mean(a["answer"] == c["answer"] for a, c in zip(results[PATHS[0]], results[PATHS[2]]))
    n = len(results[PATHS[0]])
    print(f"## Latency at batch size 1: compressed top-{k} vs full-text top-{k}\n")
    print(f"{n} evaluation questions from {art / 'raw_corpus' / 'questions_eval.jsonl'} ({args.warmup} warm-up "
          f"questions untimed); device {device}, torch threads {torch.get_num_threads()}; n_mem {model.n_mem}, "
          f"doc_max_length {model.doc_max_length}, generator hidden {model.hidden_size}; greedy, max_new_tokens {mnt}; "
          f"index {(index.meta.get('index') or {}).get('type') or index.meta.get('index_type', '?')} over {index.index.ntotal} documents.\n")
    print("| path | context positions (mean) | prompt positions (mean) | tokens generated (mean) | retrieval p50 ms | "
          "TTFT p50 ms | TTFT p95 ms | generator TTFT p50 ms | answer p50 ms | answer p95 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for path in PATHS:
        rs = results[path]
        s = {key: [r[key] for r in rs] for key in ("retrieval", "ttft", "gen_ttft", "answer_ms", "context", "prompt", "tokens")}
        summary[path] = s
        print(f"| {path} | {statistics.mean(s['context']):.1f} | {statistics.mean(s['prompt']):.1f} | "
              f"{statistics.mean(s['tokens']):.1f} | {pct(s['retrieval'], 50):.1f} | {pct(s['ttft'], 50):.1f} | "
              f"{pct(s['ttft'], 95):.1f} | {pct(s['gen_ttft'], 50):.1f} | {pct(s['answer_ms'], 50):.1f} | "
              f"{pct(s['answer_ms'], 95):.1f} |")
    comp, full, at_query, floor = (summary[p] for p in PATHS)
    context_ratio = statistics.mean(full["context"]) / statistics.mean(comp["context"])
    prompt_ratio = statistics.mean(full["prompt"]) / statistics.mean(comp["prompt"])
    speedup = pct(full["ttft"], 50) / pct(comp["ttft"], 50)
    gen_speedup = pct(full["gen_ttft"], 50) / pct(comp["gen_ttft"], 50)
    answer_speedup = pct(full["answer_ms"], 50) / pct(comp["answer_ms"], 50)
    index_gain = pct(at_query["ttft"], 50) / pct(comp["ttft"], 50)
    goal = speedup >= 0.9 * context_ratio
    print()
    print(f"- context positions, full text / compressed: {context_ratio:.2f}x (whole prompt: {prompt_ratio:.2f}x)")
    print(f"- TTFT speed-up, full text / compressed (p50, question to first token): {speedup:.2f}x; "
          f"generator only (after retrieval): {gen_speedup:.2f}x; whole answer: {answer_speedup:.2f}x")
    print(f"- goal TTFT speed-up >= 0.9 x context ratio = {0.9 * context_ratio:.2f}x: "
          f"{'MET' if goal else 'NOT MET'} ({speedup:.2f}x)")
    print(f"- precomputed memory vs compressing the {k} documents per question: TTFT p50 "
          f"{pct(comp['ttft'], 50):.1f} ms vs {pct(at_query['ttft'], 50):.1f} ms ({index_gain:.2f}x slower without "
          f"the index); same answer in {same_answer:.0%} of questions")
    print(f"- generator TTFT p50 above the no-document floor ({pct(floor['gen_ttft'], 50):.1f} ms): compressed "
          f"{pct(comp['gen_ttft'], 50) - pct(floor['gen_ttft'], 50):.1f} ms, full text "
          f"{pct(full['gen_ttft'], 50) - pct(floor['gen_ttft'], 50):.1f} ms")
    print(f"- the full-text and compressed paths retrieved the same documents for every question: {rows_equal}")
    print("- TTFT = until the first generated token id exists (hook on ClaraModel._next_token), from the question "
          "string, retrieval included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
