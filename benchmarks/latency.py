"""Question-answering latency at batch size 1: compressed top-k (what CLaRa serves) vs full-text top-k.

    .venv/bin/python benchmarks/latency.py                 # artifacts of `make run` in this checkout
    .venv/bin/python benchmarks/latency.py --root /path/to/project --questions 50 --k 5
    .venv/bin/python benchmarks/latency.py --generators embedded --dtypes float32   # ~15 s

For the first N evaluation questions, one question at a time, four paths through the same model:

- compressed (index): question -> query reasoner -> index search -> generator over k x n_mem memory
  vectors read from the index (precomputed offline). This is ``ClaraRAG.ask``.
- full text: the same question, query encoding and search, then the same generator over the k retrieved
  documents' raw text (``ClaraModel.answer_from_text``; each document cut to doc_max_length generator tokens,
  the budget the compressor reads).
- compressed at query time: as the first, but the k documents are compressed by ``ClaraModel.compress``
  per question instead of read from the index: what serving would cost without the offline index.
- no documents (floor): the same retrieval, then the generator over the prompt without any document: the
  fixed cost every path pays (not part of the goal).

Three sections, each measured in float32 and in bfloat16 (--dtypes; ``ClaraModel.load(dtype=...)``, what
``CLARA_DTYPE`` / ``clara ask --dtype`` select when serving); --generators picks embedded and/or 0.5b:

- embedded: the trained artifacts of `make run` (artifacts/clara_model, compressed_index, raw_corpus): a
  4-layer, 256-wide Llama. At this size a forward pass is cheap enough that per-call costs (Python,
  query encoding) weigh as much as the prompt length.
- 0.5b: the same pipeline code with a generator of a real serving size: a Llama with Qwen2-0.5B's layer
  shapes (24 layers, hidden 896, 14 heads, 2 KV heads, MLP 4864; ~0.36 B parameters besides embeddings),
  the embedded tokenizer, the MiniLM compressor, and an index of the same corpus built for it by
  ``build_index``. Its weights are random (nothing is downloaded, nothing is trained): latency does not
  depend on the values of the weights, but answers do, so it generates a fixed --large-new-tokens tokens
  per path and its answers mean nothing. Its retrieved documents are whatever the untrained query
  reasoner finds; both paths use the same ones.
- 0.5b over real Wikipedia passages (when ../shared/data/wiki_scp_qa is present, or --passages): the same
  generator with doc_max_length 128 (16 memory tokens per passage at rate 8) over the wiki_scp_qa passages
  that fill that budget (as a corpus chunked to it would), asked their own questions. The embedded corpus's
  documents are short (~50 generator tokens), so the compressed prompt there is mostly template and question.

Each path is timed from the question string to (1) the first generated token id and (2) the decoded answer.
Time to first token is measured with a hook, not a proxy: ``ClaraModel._next_token`` is wrapped on the
instance, and the clock is read when its first call returns, i.e. when the first token id exists (after the
prompt prefill; a CUDA device is synchronised first). Whole answer = until ``generate`` returns the decoded
string (greedy, stops at EOS or the token limit). The paths alternate per question after a warm-up, so
background load slows them alike. One torch thread by default (--threads).

Token counts: generator input = every position of the generator's prompt (template, question, and the
documents' text or memory vectors); document positions = the positions holding documents only.

Goal check (issue 5): TTFT speed-up (full text / compressed, p50, from the question string, retrieval
included) >= 0.9 x the ratio of generator input tokens. Prefill time grows with the tokens the generator
reads, question and template included, so that ratio is what an ideal speed-up equals; the ratio of
document positions alone is printed too, and no generator can reach it, since the question and template
are read on both paths. Everything is measured in this one run; nothing here is a test.
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


# A generator of a real serving size (Qwen2-0.5B's layer shapes), built from scratch by ClaraModel.
LARGE_GENERATOR = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                   "num_attention_heads": 14, "num_key_value_heads": 2}


def measure(rag, questions: list[str], k: int, max_new_tokens: int, warmup: int) -> dict:
    """Run the four paths over `questions` (the first `warmup` untimed); per path a list of per-question dicts."""
    model, index = rag.model, rag.index
    device = model.mem_embeddings.device
    clock = FirstTokenClock(model)

    def run(path: str, question: str) -> dict:
        clock.reset()
        t0 = time.perf_counter()
        scores, rows = rag.retrieve([question], k)  # query reasoner + index search
        t_ret = time.perf_counter()
        texts = [index.documents[r]["text"] for r in rows[0]]
        if path == "no documents (floor)":  # the generator's fixed cost: the same prompt without documents
            answer = model.answer([question], None, max_new_tokens=max_new_tokens, batch_size=1)[0]
            prompt, _ = model._prompt_ids(question, 0)
            context = 0
        elif path == "full text":
            answer = model.answer_from_text([question], [texts], max_new_tokens=max_new_tokens, batch_size=1)[0]
            prompt, _ = model._prompt_ids(question, k, texts)
            context = len(prompt) - len(model._prompt_ids(question, 0)[0])
        else:
            if path == "compressed (index)":
                memory = torch.from_numpy(index.embeddings(rows).astype(np.float32))
            else:
                memory = model.compress(texts, batch_size=k).unsqueeze(0)
            answer = model.answer([question], memory, max_new_tokens=max_new_tokens, batch_size=1)[0]
            prompt, _ = model._prompt_ids(question, k)
            context = memory.shape[1] * memory.shape[2]
        if device.type == "cuda":
            torch.cuda.synchronize()
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
                if i >= warmup:
                    results[path].append(r)
    return results


def report(title: str, setup: str, results: dict, k: int) -> dict:
    """Print one generator's table and findings; return its headline figures."""
    print(f"## {title}\n\n{setup}\n")
    print("| path | document positions (mean) | generator input tokens (mean) | tokens generated (mean) | "
          "retrieval p50 ms | TTFT p50 ms | TTFT p95 ms | generator TTFT p50 ms | answer p50 ms | answer p95 ms |")
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
    doc_ratio = statistics.mean(full["context"]) / statistics.mean(comp["context"])
    input_ratio = statistics.mean(full["prompt"]) / statistics.mean(comp["prompt"])
    speedup = pct(full["ttft"], 50) / pct(comp["ttft"], 50)
    gen_speedup = pct(full["gen_ttft"], 50) / pct(comp["gen_ttft"], 50)
    answer_speedup = pct(full["answer_ms"], 50) / pct(comp["answer_ms"], 50)
    index_gain = pct(at_query["ttft"], 50) / pct(comp["ttft"], 50)
    rows_equal = all(a["rows"] == b["rows"] for a, b in zip(results[PATHS[0]], results[PATHS[1]]))
    same_answer = statistics.mean(a["answer"] == c["answer"] for a, c in zip(results[PATHS[0]], results[PATHS[2]]))
    goal = speedup >= 0.9 * input_ratio
    print()
    print(f"- generator input tokens, full text / compressed: {input_ratio:.2f}x (document positions alone: "
          f"{doc_ratio:.2f}x)")
    print(f"- TTFT speed-up, full text / compressed (p50, question to first token, retrieval included): "
          f"{speedup:.2f}x = {speedup / input_ratio:.2f} x the input-token ratio ({speedup / doc_ratio:.2f} x the "
          f"document-position ratio); generator alone (after retrieval): {gen_speedup:.2f}x; whole answer: "
          f"{answer_speedup:.2f}x")
    print(f"- goal TTFT speed-up >= 0.9 x input-token ratio = {0.9 * input_ratio:.2f}x: "
          f"{'MET' if goal else 'NOT MET'} ({speedup:.2f}x)")
    print(f"- precomputed memory vs compressing the {k} documents per question: TTFT p50 "
          f"{pct(comp['ttft'], 50):.1f} ms vs {pct(at_query['ttft'], 50):.1f} ms ({index_gain:.2f}x slower without "
          f"the index); same answer in {same_answer:.0%} of questions")
    print(f"- generator TTFT p50 above the no-document floor ({pct(floor['gen_ttft'], 50):.1f} ms): compressed "
          f"{pct(comp['gen_ttft'], 50) - pct(floor['gen_ttft'], 50):.1f} ms, full text "
          f"{pct(full['gen_ttft'], 50) - pct(floor['gen_ttft'], 50):.1f} ms")
    # generator TTFT against prompt length over every timed question of the three generator paths that read
    # stored or no documents: a + b x tokens. `a` is what one forward pass costs whatever its length (reading
    # every weight once, Python); the speed-up a pipeline on this generator can reach is then
    # about (a + b x full) / (a + b x compressed), below the token ratio whenever a > 0.
    xs = np.array([r["prompt"] for p in (PATHS[0], PATHS[1], PATHS[3]) for r in results[p]], dtype=np.float64)
    ys = np.array([r["gen_ttft"] for p in (PATHS[0], PATHS[1], PATHS[3]) for r in results[p]], dtype=np.float64)
    b, a = np.polyfit(xs, ys, 1)
    lc, lf = statistics.mean(comp["prompt"]), statistics.mean(full["prompt"])
    predicted = (a + b * lf) / (a + b * lc)
    print(f"- generator TTFT ~= {a:.1f} ms + {b:.3f} ms x input tokens (least squares over {len(xs)} timed "
          f"prefills of the compressed, full-text and no-document paths): a forward pass costs {a:.1f} ms "
          f"whatever its length, so this line predicts a TTFT speed-up of ({a:.1f} + {b:.3f} x {lf:.0f}) / "
          f"({a:.1f} + {b:.3f} x {lc:.0f}) = {predicted:.2f}x = {predicted / input_ratio:.2f} x the input-token ratio; "
          f"measured generator-only {gen_speedup:.2f}x")
    print(f"- the full-text and compressed paths retrieved the same documents for every question: {rows_equal}\n")
    return {"input_ratio": input_ratio, "doc_ratio": doc_ratio, "speedup": speedup, "gen_speedup": gen_speedup,
            "fixed_ms": a, "per_token_ms": b, "predicted": predicted,
            "answers": [r["answer"] for r in results[PATHS[0]]],
            "answer_speedup": answer_speedup, "goal": goal, "ttft_comp": pct(comp["ttft"], 50),
            "ttft_full": pct(full["ttft"], 50)}


def large_generator_rag(rag, documents: list[dict], work: Path, doc_max_length: int | None = None,
                        full_only: bool = False):
    """The embedded configuration with LARGE_GENERATOR in place of the small one, untrained, and an index of
    `documents` built for it with the project's build_index; returns (rag, documents indexed).

    doc_max_length: override the embedded one (the compression rate stays, so memory tokens per document
    scale with it). full_only: index only documents of at least doc_max_length generator tokens, as a
    corpus chunked to that budget would be (an untrained query reasoner otherwise prefers the shortest
    documents, and the full-text path would read far less than a real retriever's top-k)."""
    from clara_pipeline.index import build_index
    from clara_pipeline.inference import ClaraRAG
    from clara_pipeline.model import ClaraModel

    cfg = dict(rag.model.model_cfg)
    cfg["generator"] = {**(cfg.get("generator") or {}), **LARGE_GENERATOR}
    cfg["generator_path"] = None
    if doc_max_length:
        cfg["doc_max_length"] = int(doc_max_length)
    model = ClaraModel.from_params(cfg, [d["text"] for d in documents], seed=0)
    model.eval()
    if full_only:
        budget = model.doc_max_length
        documents = [d for d in documents
                     if len(model.gen_tok(d["text"], add_special_tokens=False)["input_ids"]) >= budget]
    build_index(model, documents, work / "index", batch_size=64)
    from clara_pipeline.index import CompressedIndex

    return ClaraRAG(model, CompressedIndex.load(work / "index")), documents


DEFAULT_PASSAGES = ROOT.parent / "shared" / "data" / "wiki_scp_qa" / "wiki_scp_qa.jsonl"


def read_passages(path: Path) -> tuple[list[dict], dict[str, str]]:
    """wiki_scp_qa-style rows ({"question": [...], "docs": [passage]}) -> (documents, {document id: its first
    question})."""
    from clara_pipeline.jsonl import read_jsonl

    documents, questions = [], {}
    for i, row in enumerate(read_jsonl(path)):
        docs, qs = row.get("docs") or [], row.get("question") or []
        if not docs or not isinstance(docs[0], str) or not docs[0].strip():
            raise ValueError(f"{path}: record {i + 1} has no passage in 'docs'")
        documents.append({"id": f"passage-{i}", "title": "", "text": docs[0]})
        if qs:
            questions[f"passage-{i}"] = qs[0] if isinstance(qs, list) else str(qs)
    return documents, questions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="project root holding artifacts/ (default: this checkout)")
    parser.add_argument("--generators", default="embedded,0.5b",
                        help="comma-separated: embedded (the trained model), 0.5b (untrained, Qwen2-0.5B shapes)")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="comma-separated inference dtypes to measure each generator in (default float32,bfloat16; "
                             "bfloat16 is fast on CPUs with AVX512-BF16/AMX and on GPUs)")
    parser.add_argument("--questions", type=int, default=50, help="evaluation questions to time, embedded (default 50)")
    parser.add_argument("--large-questions", type=int, default=20, help="questions to time with the 0.5b generator (default 20)")
    parser.add_argument("--k", type=int, default=5, help="documents per question (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="embedded: answer token limit (stops at EOS)")
    parser.add_argument("--large-new-tokens", type=int, default=4,
                        help="0.5b: tokens generated per answer (random weights rarely stop; the trained embedded "
                             "model's answers average ~2-3 tokens + EOS)")
    parser.add_argument("--passages", default=str(DEFAULT_PASSAGES),
                        help="wiki_scp_qa JSONL: also time the 0.5b generator over these real Wikipedia passages "
                             "(default ../shared/data/wiki_scp_qa/wiki_scp_qa.jsonl, skipped when absent; 'none' skips)")
    parser.add_argument("--passages-doc-max-length", type=int, default=128,
                        help="compressor/full-text budget per passage for --passages (default 128: the passages "
                             "are ~95 words; the compression rate of params stays, so 16 memory tokens at rate 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed questions first (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: batch-1 latency of a small model; on a shared 2-core "
                             "machine 2 threads oversubscribe and were ~40x slower; 0 = torch's choice)")
    args = parser.parse_args(argv)
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = sorted(set(generators) - {"embedded", "0.5b"})
    if unknown or not generators:
        parser.error(f"--generators: unknown {unknown}; choose from embedded, 0.5b")
    from clara_pipeline.model import INFERENCE_DTYPES, inference_dtype

    explicit = [d for d in INFERENCE_DTYPES if d != "auto"]  # float32 first; "auto" would time one of them twice
    if not dtypes or set(dtypes) - set(explicit):
        parser.error(f"--dtypes: choose from {', '.join(explicit)}")
    dtypes = sorted(set(dtypes), key=explicit.index)  # cast down only: float32 first

    art = args.root / "artifacts"
    needed = [art / "clara_model", art / "compressed_index", art / "raw_corpus" / "questions_eval.jsonl"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print("benchmarks/latency.py needs the trained artifacts of the embedded default; missing:\n  "
              + "\n  ".join(missing) + f"\nRun `make run` in {args.root} first (or pass --root).", file=sys.stderr)
        return 1

    import tempfile

    from clara_pipeline.inference import ClaraRAG
    from clara_pipeline.jsonl import read_jsonl

    if args.threads:
        torch.set_num_threads(args.threads)
    rag = ClaraRAG.load(art / "clara_model", art / "compressed_index")
    rag.model.eval()
    questions = [q["question"] for q in read_jsonl(art / "raw_corpus" / "questions_eval.jsonl")]

    def first(n: int, qs: list[str] | None = None) -> list[str]:
        total = args.warmup + n
        qs = questions if qs is None else qs
        if len(qs) < total:
            print(f"note: {len(qs)} evaluation questions, fewer than {total}; reusing from the start", file=sys.stderr)
            qs = qs * (total // max(len(qs), 1) + 1)
        return qs[:total]

    def context(model, source: str) -> str:
        return (f"Device {model.mem_embeddings.device}, torch threads {torch.get_num_threads()}; top-{args.k}; "
                f"n_mem {model.n_mem}, doc_max_length {model.doc_max_length}; {args.warmup} warm-up questions "
                f"untimed; {source}.")

    print(f"# Latency at batch size 1: compressed top-{args.k} vs full-text top-{args.k}, same generator\n")
    headline = {}
    if "embedded" in generators:
        for dtype in dtypes:
            embedded = ClaraRAG.load(art / "clara_model", art / "compressed_index", dtype=dtype)
            lm = embedded.model._generator_lm().config
            setup = (f"{args.questions} questions; generator: the trained embedded Llama ({lm.num_hidden_layers} "
                     f"layers, hidden {lm.hidden_size}), whole model in {dtype}; greedy, max_new_tokens "
                     f"{args.max_new_tokens}; index {(embedded.index.meta.get('index') or {}).get('type', '?')} over "
                     f"{embedded.index.index.ntotal} documents. "
                     + context(embedded.model, f"questions from {art / 'raw_corpus' / 'questions_eval.jsonl'}"))
            results = measure(embedded, first(args.questions), args.k, args.max_new_tokens, args.warmup)
            headline[("embedded", dtype)] = report(f"Embedded default (trained), {dtype}", setup, results, args.k)
            del embedded

    def large_sections(label: str, title: str, documents: list[dict], qs, source: str,
                       doc_max_length: int | None = None) -> None:
        """qs: questions, or {document id: question} to ask about the documents that were indexed."""
        with tempfile.TemporaryDirectory(prefix="clara-latency-") as work:
            t0 = time.perf_counter()
            big, indexed = large_generator_rag(rag, documents, Path(work), doc_max_length, full_only=isinstance(qs, dict))
            built = time.perf_counter() - t0
            if isinstance(qs, dict):
                qs = [qs[d["id"]] for d in indexed if d["id"] in qs]
                source += (f" ({len(indexed)} of {len(documents)} passages: those with at least doc_max_length generator "
                           "tokens, as a corpus chunked to that budget; their first questions)")
            lm = big.model._generator_lm()
            params = sum(p.numel() for n, p in lm.named_parameters() if "embed" not in n and "lm_head" not in n)
            for dtype in dtypes:  # float32 first: the model is built in float32 and cast down
                big.model.to(inference_dtype(dtype))
                setup = (f"{args.large_questions} questions; generator: untrained Llama with Qwen2-0.5B's layer "
                         f"shapes ({lm.config.num_hidden_layers} layers, hidden {lm.config.hidden_size}, "
                         f"{lm.config.num_attention_heads} heads / {lm.config.num_key_value_heads} KV heads, "
                         f"{params / 1e6:.0f} M parameters besides embeddings), whole model in {dtype}; "
                         f"{args.large_new_tokens} tokens per answer (greedy; random weights, answers meaningless); "
                         f"flat index of {big.index.index.ntotal} documents built for it (float32) in {built:.0f} s "
                         "(model init + build_index). "
                         + context(big.model, f"documents and questions from {source}"))
                results = measure(big, first(args.large_questions, qs), args.k, args.large_new_tokens, args.warmup)
                headline[(label, dtype)] = report(f"{title}, {dtype}", setup, results, args.k)
                # random weights may emit EOS early on one path and not the other; say so if it happened
                counts = {p: round(statistics.mean(r["tokens"] for r in results[p]), 2) for p in PATHS}
                if len(set(counts.values())) > 1:
                    print(f"note: tokens generated differ between paths ({counts}); compare whole-answer times "
                          "with care\n")

    if "0.5b" in generators:
        large_sections("0.5b", "Generator of a serving size (0.5B-class, untrained)",
                       read_jsonl(art / "raw_corpus" / "documents.jsonl"), questions,
                       str(art / "raw_corpus"))
        passages = Path(args.passages) if args.passages and args.passages.lower() != "none" else None
        if passages is not None and passages.is_file():
            documents, passage_questions = read_passages(passages)
            large_sections(f"0.5b, Wikipedia passages, doc_max_length {args.passages_doc_max_length}",
                           f"0.5B-class generator over real Wikipedia passages (doc_max_length "
                           f"{args.passages_doc_max_length})", documents, passage_questions, str(passages),
                           args.passages_doc_max_length)
        elif passages is not None:
            print(f"(no {passages}: the section over real Wikipedia passages is skipped)\n")
    print("## Summary\n")
    print("| generator | dtype | input-token ratio | document-position ratio | TTFT p50 compressed ms | TTFT p50 full text ms | "
          "TTFT speed-up | generator-only speed-up | predicted by a + b x tokens | whole-answer speed-up | "
          "goal (>= 0.9 x input ratio) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for (name, dtype), h in headline.items():
        print(f"| {name} | {dtype} | {h['input_ratio']:.2f}x | {h['doc_ratio']:.2f}x | {h['ttft_comp']:.1f} | {h['ttft_full']:.1f} | "
              f"{h['speedup']:.2f}x | {h['gen_speedup']:.2f}x | {h['predicted']:.2f}x ({h['fixed_ms']:.1f} ms + "
              f"{h['per_token_ms']:.3f} ms/token) | {h['answer_speedup']:.2f}x | "
              f"{'MET' if h['goal'] else 'NOT MET'} |")
    if ("embedded", "float32") in headline:
        base = headline[("embedded", "float32")]["answers"]
        for dtype in dtypes[1:]:
            other = headline[("embedded", dtype)]["answers"]
            print(f"\nembedded, {dtype} vs float32: the same compressed-path answer for "
                  f"{statistics.mean(a == b for a, b in zip(base, other)):.0%} of the {len(base)} questions")
    print("\nTTFT = until the first generated token id exists (hook on ClaraModel._next_token), from the question "
          "string, query encoding and index search included.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
