"""LLM synthesizers against a real HTTP server on 127.0.0.1 (OpenAI chat-completions format) and a tiny
random-init Llama (transformers backend). No network, no downloaded model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from clara_pipeline.corpus import generate_corpus
from clara_pipeline.prompts import PARAPHRASE_PROMPT, QA_PROMPT
from clara_pipeline.synthesis import (
    LLMSynthesizer, OfflineSynthesizer, OpenAIChatClient, ResponseCache, ResponseParseError, SynthesisError,
    build_stage1_records, cache_key, make_synthesizer, offline_paraphrase, parse_paraphrase_response, parse_qa_response,
)

DOCS = [
    {"id": "d1", "title": "Mara Holt",
     "text": "Mara Holt is a marine biologist. She was born in Port Elwin in 1950. "
             "In 1978, she joined the Northern Ocean Institute."},
    {"id": "d2", "title": "Kell",
     "text": "Kell is a fishing village on the Arden coast. It has 1,200 inhabitants. Its harbour was built in 1887."},
    {"id": "d3", "title": "Tides of Arden",
     "text": "Tides of Arden is a book by Mara Holt. It was published in 1994 by Gull Press."},
]
BY_TEXT = {d["text"]: d for d in DOCS}

QA_REPLIES = {
    # fenced JSON; the third answer differs in case from the document
    "d1": '```json\n' + json.dumps([
        {"question": "What is Mara Holt's profession?", "answer": "marine biologist"},
        {"question": "In which year was Mara Holt born?", "answer": "1950"},
        {"question": "Which institute did Mara Holt join in 1978?", "answer": "the northern ocean institute"},
    ]) + '\n```',
    # prose around the list, a number as a JSON number
    "d2": 'Here are the pairs:\n' + json.dumps([
        {"question": "How many inhabitants does Kell have?", "answer": "1,200"},
        {"question": "When was the harbour of Kell built?", "answer": 1887},
    ]) + '\nHope this helps.',
    # an object wrapping the list
    "d3": json.dumps({"pairs": [
        {"question": "Who wrote Tides of Arden?", "answer": "Mara Holt"},
        {"question": "Which publisher published Tides of Arden?", "answer": "Gull Press."},
    ]}),
}
PARAPHRASE_REPLIES = {
    "d1": ["Born in Port Elwin in 1950, Mara Holt works as a marine biologist. She joined the Northern Ocean "
           "Institute in 1978.",
           "Paraphrase: Mara Holt, a marine biologist, was born in 1950 in Port Elwin, and in 1978 she joined the "
           "Northern Ocean Institute."],
    "d2": ["Here is the paraphrase:\nThe fishing village of Kell lies on the Arden coast. Its harbour was built in "
           "1887, and it has 1,200 inhabitants.",
           "Kell, a fishing village on the Arden coast, has 1,200 inhabitants; its harbour was built in 1887."],
    "d3": ['"Mara Holt is the author of the book Tides of Arden, which Gull Press published in 1994."',
           "Gull Press published Tides of Arden, a book by Mara Holt, in 1994."],
}


# ----------------------------------------------------------------------------- a fake OpenAI-compatible server

def parse_prompt(body: dict) -> tuple[str, dict, int]:
    """(kind, document, paraphrase variant) of a chat-completions request made by the synthesizer."""
    user = body["messages"][-1]["content"]
    title = re.search(r"^Title: (.*)$", user, re.M).group(1)
    text = user.split("\nDocument:\n", 1)[1]
    doc = BY_TEXT.get(text) or {"id": "?", "title": title, "text": text}
    if "question-answer pairs" in user:
        return "qa", doc, 0
    variant = next(i for i, style in enumerate(PARAPHRASE_PROMPT.styles) if style in user)
    return "paraphrase", doc, variant


def fixed_replies(kind: str, doc: dict, variant: int) -> str:
    return QA_REPLIES[doc["id"]] if kind == "qa" else PARAPHRASE_REPLIES[doc["id"]][variant]


class FakeLLM:
    """ThreadingHTTPServer on 127.0.0.1:<free port> answering POST /v1/chat/completions.

    ``reply(kind, doc, variant)`` gives the assistant text; ``fail(kind, doc, attempt)`` may instead give
    (status, headers) of an error for the attempt-th request (0-based) with that (kind, doc, variant).
    """

    def __init__(self, reply: Callable[[str, dict, int], str] = fixed_replies,
                 fail: Callable[[str, dict, int], tuple[int, dict] | None] | None = None,
                 delay: Callable[[str, dict, int], float] | None = None):
        self.reply, self.fail, self.delay = reply, fail, delay
        self.requests: list[dict] = []  # every request: kind, doc_id, variant, headers, body
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                kind, doc, variant = parse_prompt(body)
                with fake.lock:
                    attempt = sum(1 for r in fake.requests if (r["kind"], r["doc_id"], r["variant"]) == (kind, doc["id"], variant))
                    fake.requests.append({"path": self.path, "kind": kind, "doc_id": doc["id"], "variant": variant,
                                          "headers": dict(self.headers), "body": body})
                if fake.delay:
                    time.sleep(fake.delay(kind, doc, attempt))
                error = fake.fail(kind, doc, attempt) if fake.fail else None
                if error:
                    status, headers = error
                    self._send(status, {"error": {"message": f"simulated {status}"}}, headers)
                    return
                self._send(200, {"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant",
                                                          "content": fake.reply(kind, doc, variant)}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def count(self, **match) -> int:
        with self.lock:
            return sum(1 for r in self.requests if all(r[k] == v for k, v in match.items()))

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy_and_no_env(monkeypatch):
    # A proxy from the environment must not intercept 127.0.0.1; the env config is set per test.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("CLARA_LLM_BASE_URL", "CLARA_LLM_MODEL", "CLARA_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)


def openai_cfg(url: str, **llm) -> dict:
    return {"backend": "openai", "llm": {"base_url": url, "model": "fake-model", "concurrency": 2,
                                         "backoff_s": 0.001, "backoff_max_s": 0.01, "timeout_s": 5, **llm}}


def run(cfg: dict, cache_dir, docs=DOCS, max_qa=8, paraphrases=2):
    synth = make_synthesizer(cfg, seed=0, cache_dir=cache_dir)
    return build_stage1_records(docs, synth, max_qa, paraphrases)


# ----------------------------------------------------------------------------- openai backend

def test_openai_records_pass_filters(tmp_path, monkeypatch):
    monkeypatch.setenv("CLARA_LLM_API_KEY", "sk-test-secret")
    with FakeLLM() as server:
        records, stats = run(openai_cfg(server.url), tmp_path / "cache")
    assert stats["synthesizer"] == "openai" and stats["prompt_version"] == "qa-v1+paraphrase-v1"
    assert stats["rejected"] == {} and stats["docs_without_qa"] == 0 and stats["docs_without_paraphrase"] == 0
    assert (stats["qa"], stats["paraphrase"], stats["records"]) == (7, 6, 13)
    qa = [(r["doc_id"], r["question"], r["answer"]) for r in records if r["data_type"] == "qa"]
    assert ("d1", "Which institute did Mara Holt join in 1978?", "the Northern Ocean Institute") in qa  # document's spelling
    assert ("d2", "When was the harbour of Kell built?", "1887") in qa                                     # JSON number
    assert ("d3", "Which publisher published Tides of Arden?", "Gull Press") in qa                         # full stop dropped
    for r in records:
        if r["data_type"] == "qa":
            assert r["answer"] in r["doc"]
        else:
            assert r["answer"] != r["doc"] and not r["answer"].startswith(("Here is", "Paraphrase", '"'))
    assert [r["doc_id"] for r in records] == ["d1"] * 5 + ["d2"] * 4 + ["d3"] * 4  # document order

    assert server.count() == 9 == stats["llm"]["responses_generated"] == stats["llm"]["http_requests"]
    assert stats["llm"]["responses_from_cache"] == 0 and stats["llm"]["retries"] == 0
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["body"]["model"] == "fake-model"
    assert first["body"]["temperature"] == 0.0 and first["body"]["messages"][0]["role"] == "system"
    assert first["headers"]["Authorization"] == "Bearer sk-test-secret"
    cache_text = (tmp_path / "cache" / "responses.jsonl").read_text()
    assert len(cache_text.splitlines()) == 9 and "sk-test-secret" not in cache_text


def test_openai_config_from_environment(tmp_path, monkeypatch):
    with FakeLLM() as server:
        monkeypatch.setenv("MY_URL", server.url)
        monkeypatch.setenv("CLARA_LLM_MODEL", "env-model")
        cfg = {"backend": "openai", "llm": {"base_url_env": "MY_URL", "backoff_s": 0.001}}
        records, stats = run(cfg, tmp_path, docs=DOCS[:1], paraphrases=0)
    assert stats["qa"] == 3 and stats["llm"]["model"] == "env-model"
    assert server.requests[0]["body"]["model"] == "env-model" and "Authorization" not in server.requests[0]["headers"]


def test_openai_config_errors():
    with pytest.raises(ValueError, match="CLARA_LLM_BASE_URL"):
        make_synthesizer({"backend": "openai", "llm": {"model": "m"}}, seed=0)
    with pytest.raises(ValueError, match="CLARA_LLM_MODEL"):
        make_synthesizer({"backend": "openai", "llm": {"base_url": "http://127.0.0.1:1/v1"}}, seed=0)
    with pytest.raises(ValueError, match="never go into params.yaml"):
        make_synthesizer({"backend": "openai", "llm": {"base_url": "http://x/v1", "model": "m", "api_key": "k"}}, seed=0)
    with pytest.raises(ValueError, match="unknown scp.filters"):
        make_synthesizer({"backend": "openai", "llm": {"base_url": "http://x/v1", "model": "m"},
                          "filters": {"max_answer_wrds": 3}}, seed=0)
    with pytest.raises(ValueError, match="model_path"):
        make_synthesizer({"backend": "transformers"}, seed=0)


def test_429_and_500_are_retried(tmp_path):
    def fail(kind, doc, attempt):
        if kind == "qa" and doc["id"] == "d1" and attempt == 0:
            return 429, {"Retry-After": "0"}
        if kind == "paraphrase" and doc["id"] == "d2" and attempt == 0:
            return 500, {}
        return None

    with FakeLLM(fail=fail) as server:
        records, stats = run(openai_cfg(server.url), tmp_path, paraphrases=1)
    assert server.count(kind="qa", doc_id="d1") == 2 and server.count(kind="paraphrase", doc_id="d2") == 2
    assert server.count() == 6 + 2
    assert stats["llm"]["retries"] == 2 and stats["llm"]["http_requests"] == 8
    assert stats["llm"]["responses_generated"] == 6 and stats["rejected"] == {}
    assert stats["qa"] == 7 and stats["paraphrase"] == 3


def test_backoff_honours_retry_after_and_grows_exponentially():
    sleeps: list[float] = []
    answers = iter([(429, {"Retry-After": "3"}), (503, {}), (502, {}), None])
    with FakeLLM(fail=lambda kind, doc, attempt: next(answers)) as server:
        client = OpenAIChatClient(server.url, "m", timeout_s=5, max_retries=4, backoff_s=0.5, backoff_max_s=10,
                                  sleep=sleeps.append)
        reply = client(QA_PROMPT.messages(DOCS[0]), "d1")
    assert reply == QA_REPLIES["d1"] and server.count() == 4
    assert sleeps[0] == 3.0                # the server's Retry-After
    assert 0.5 <= sleeps[1] <= 1.0         # backoff_s * 2**1, jittered down to half at most
    assert 1.0 <= sleeps[2] <= 2.0         # backoff_s * 2**2
    assert client.stats == {"http_requests": 4, "retries": 3}


def test_timeout_is_retried(tmp_path):
    slow_first = lambda kind, doc, attempt: 2.0 if attempt == 0 else 0.0  # noqa: E731
    with FakeLLM(delay=slow_first) as server:
        client = OpenAIChatClient(server.url, "m", timeout_s=0.3, max_retries=2, backoff_s=0.001)
        assert client(QA_PROMPT.messages(DOCS[1]), "d2") == QA_REPLIES["d2"]
    assert server.count() == 2 and client.stats["retries"] == 1


def test_persistent_500_names_the_document_and_keeps_finished_replies(tmp_path):
    broken = {"on": True}

    def fail(kind, doc, attempt):
        return (500, {}) if broken["on"] and doc["id"] == "d2" else None

    with FakeLLM(fail=fail) as server:
        cfg = openai_cfg(server.url, concurrency=1, max_retries=2)
        with pytest.raises(SynthesisError, match=r"document 'd2'.*failed after 3 attempts.*HTTP 500"):
            run(cfg, tmp_path, paraphrases=1)
        assert server.count(doc_id="d2") == 3  # one request and two retries, then the error
        # d1's replies arrived before the failure and were written to the cache as they came.
        assert len(ResponseCache(tmp_path)) == 2
        broken["on"] = False
        before = server.count()
        records, stats = run(cfg, tmp_path, paraphrases=1)
        assert server.count() - before == 4  # only what is missing: d2 and d3, QA and paraphrase
    assert stats["llm"]["responses_from_cache"] == 2 and stats["qa"] == 7


def test_client_errors_are_not_retried_and_name_the_document():
    with FakeLLM(fail=lambda kind, doc, attempt: (400, {})) as server:
        client = OpenAIChatClient(server.url, "m", max_retries=3, backoff_s=0.001)
        with pytest.raises(SynthesisError, match=r"document 'd3'.*HTTP 400 \(not retried\)"):
            client(QA_PROMPT.messages(DOCS[2]), "d3")
    assert server.count() == 1


def test_connection_refused_is_retried_then_names_the_document():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    client = OpenAIChatClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff_s=0.001, sleep=sleeps.append)
    with pytest.raises(SynthesisError, match=r"document 'd1'.*failed after 3 attempts.*(refused|URLError)"):
        client(QA_PROMPT.messages(DOCS[0]), "d1")
    assert len(sleeps) == 2


def test_bad_answers_are_rejected_and_counted(tmp_path):
    bad_qa = {
        "d1": json.dumps([
            {"question": "Where was Mara Holt born?", "answer": "Port Elwin"},
            {"question": "WHERE was Mara Holt born", "answer": "Port Elwin"},           # duplicate question
            {"question": "In which year was Mara Holt born?", "answer": "1951"},         # not in the document
            {"question": "Which city is Mara Holt from?", "answer": "Elwin"},           # kept: a whole-token span
            {"question": "Which town is Mara Holt from?", "answer": "Elwi"},            # not a whole token
            {"question": "What is Mara Holt?", "answer": "a marine biologist who was born in Port Elwin"},  # too long
            {"question": "Who is Mara Holt?", "answer": "Mara Holt"},                    # answer in question
            {"question": "Mara?", "answer": "1978"},                                     # question too short
            {"q": "no answer"},                                                          # malformed item
            "not an object",                                                             # malformed item
        ]),
        "d2": json.dumps([{"question": "How many people live in Kell?", "answer": "1200"}]),  # numbers are exact
        "d3": "I am sorry, I cannot produce JSON for this document.",                        # garbage
    }
    bad_paraphrases = {
        "d1": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
        "d2": "Kell is a fishing village on the Arden coast. It has 1,200 inhabitants. Its harbour was built in 1887.",
        "d3": "Tides of Arden is a book by Mara Holt, published by Gull Press.",  # drops 1994
    }
    reply = lambda kind, doc, variant: bad_qa[doc["id"]] if kind == "qa" else bad_paraphrases[doc["id"]]  # noqa: E731
    with FakeLLM(reply=reply) as server:
        records, stats = run(openai_cfg(server.url), tmp_path, paraphrases=1)
    assert [(r["question"], r["answer"]) for r in records] == [
        ("Where was Mara Holt born?", "Port Elwin"), ("Which city is Mara Holt from?", "Elwin")]
    assert stats["rejected"] == {
        "answer_in_question": 1, "answer_length": 1, "answer_not_in_doc": 3, "duplicate_question": 1,
        "qa_malformed_item": 2, "qa_unparseable": 1, "question_length": 1,
        "paraphrase_content": 1, "paraphrase_identical": 1, "paraphrase_lost_number": 1,
    }
    assert stats["docs_without_qa"] == 2 and stats["docs_without_paraphrase"] == 3


def test_rerun_is_served_from_cache(tmp_path):
    with FakeLLM() as server:
        first, first_stats = run(openai_cfg(server.url), tmp_path)
        made = server.count()
        again, again_stats = run(openai_cfg(server.url), tmp_path)
        assert server.count() == made  # zero HTTP requests
    assert again == first
    assert again_stats["llm"]["responses_from_cache"] == 9 and again_stats["llm"]["responses_generated"] == 0
    assert again_stats["llm"]["http_requests"] == 0
    # A cache-only rerun does not even need the server.
    third, _ = run(openai_cfg("http://127.0.0.1:9/v1", max_retries=0), tmp_path)
    assert third == first


def test_changed_prompt_version_misses_the_cache(tmp_path):
    with FakeLLM() as server:
        run(openai_cfg(server.url), tmp_path)
        before = server.count()
        client = OpenAIChatClient(server.url, "fake-model", backoff_s=0.001)
        synth = LLMSynthesizer("openai", client, "fake-model", settings=client.settings(),
                               cache=ResponseCache(tmp_path), qa_prompt=dataclasses.replace(QA_PROMPT, version="qa-v2"))
        records, stats = build_stage1_records(DOCS, synth, 8, 2)
        assert server.count(kind="qa") - 3 == 3 and server.count() - before == 3  # QA asked again, paraphrases cached
    assert stats["prompt_version"] == "qa-v2+paraphrase-v1" and stats["qa"] == 7
    assert stats["llm"]["responses_generated"] == 3 and stats["llm"]["responses_from_cache"] == 6


def test_cache_key_parts():
    doc, settings = DOCS[0], {"temperature": 0.0}
    key = cache_key(doc, QA_PROMPT, 0, "m", settings)
    assert key == cache_key(dict(doc, id="other-id"), QA_PROMPT, 0, "m", settings)  # content, not id
    others = [cache_key(dict(doc, text=doc["text"] + " More."), QA_PROMPT, 0, "m", settings),
              cache_key(doc, dataclasses.replace(QA_PROMPT, version="qa-v9"), 0, "m", settings),
              cache_key(doc, dataclasses.replace(QA_PROMPT, user=QA_PROMPT.user + " "), 0, "m", settings),
              cache_key(doc, QA_PROMPT, 0, "other-model", settings),
              cache_key(doc, PARAPHRASE_PROMPT, 0, "m", settings),
              cache_key(doc, PARAPHRASE_PROMPT, 1, "m", settings),
              cache_key(doc, QA_PROMPT, 0, "m", {"temperature": 0.7})]
    assert len({key, *others}) == 1 + len(others)


def test_cache_survives_a_half_written_line(tmp_path):
    cache = ResponseCache(tmp_path)
    cache.put("k1", "reply one", {"doc_id": "d1"})
    with open(tmp_path / "responses.jsonl", "a") as f:
        f.write('{"key": "k2", "resp')  # the process died mid-write
    cache = ResponseCache(tmp_path)
    assert cache.get("k1") == "reply one" and "k2" not in cache and cache.unreadable_lines == 1
    cache.put("k3", "reply three")
    cache = ResponseCache(tmp_path)
    assert (cache.get("k1"), cache.get("k3"), cache.unreadable_lines) == ("reply one", "reply three", 1)


def test_concurrency_gives_the_same_records(tmp_path):
    docs = generate_corpus({"num_people": 10, "num_places": 4, "num_organisations": 4, "num_works": 6,
                            "num_train_questions": 4, "num_eval_questions": 2}, seed=0)["documents"]
    offline = OfflineSynthesizer(seed=0)

    def reply(kind, doc, variant):
        # A "model" that answers with the offline synthesizer's output, so every document gets its own data.
        if kind == "qa":
            return json.dumps([{"question": q, "answer": a} for q, a in offline.qa_pairs(doc, 6)])
        return offline_paraphrase(doc["text"], random.Random(f"{doc['text']}:{variant}"))

    def delay(kind, doc, attempt):
        # Replies finish in a scrambled order when requests run in parallel.
        return int(hashlib.md5(doc["text"].encode()).hexdigest()[:2], 16) / 255 * 0.01

    with FakeLLM(reply=reply, delay=delay) as server:
        serial, serial_stats = run(openai_cfg(server.url, concurrency=1), tmp_path / "c1", docs=docs, max_qa=4)
        parallel, parallel_stats = run(openai_cfg(server.url, concurrency=6), tmp_path / "c6", docs=docs, max_qa=4)
    assert parallel == serial and len(serial) > 2 * len(docs)
    assert parallel_stats["rejected"] == serial_stats["rejected"]
    assert server.count() == 2 * 3 * len(docs)


# ----------------------------------------------------------------------------- transformers backend

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-layer random Llama with a small byte-level BPE, saved twice: with and without a chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from clara_pipeline.tokenizer import build_generator_tokenizer

    texts = [QA_PROMPT.messages(d)[1]["content"] for d in DOCS] + [PARAPHRASE_PROMPT.messages(d)[1]["content"] for d in DOCS]
    tok = build_generator_tokenizer(texts, vocab_size=600)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    plain = tmp_path_factory.mktemp("tiny_llama_plain")
    model.save_pretrained(plain)
    tok.save_pretrained(plain)
    chat = tmp_path_factory.mktemp("tiny_llama_chat")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    model.save_pretrained(chat)
    tok.save_pretrained(chat)
    return plain, chat


@pytest.mark.parametrize("variant", ["chat", "plain"])
def test_transformers_backend_plumbing(tiny_llama, tmp_path, variant):
    model_path = tiny_llama[1] if variant == "chat" else tiny_llama[0]
    cfg = {"backend": "transformers", "llm": {"model_path": str(model_path), "max_new_tokens": 12, "device": "cpu"}}
    synth = make_synthesizer(cfg, seed=0, cache_dir=tmp_path)
    records, stats = build_stage1_records(DOCS, synth, 4, 1)
    prompt = synth.chat.prompt_text(QA_PROMPT.messages(DOCS[0]))
    if variant == "chat":
        assert prompt.startswith("<s><|system|>\n") and prompt.endswith("<|assistant|>\n")
    else:
        assert prompt.startswith("System: ") and prompt.endswith("\n\nAssistant:")
    # A random model writes garbage: nothing passes, every rejection is counted, nothing crashes.
    assert records == [] and stats["docs_without_qa"] == 3 and stats["docs_without_paraphrase"] == 3
    rejected = Counter(stats["rejected"])
    assert rejected["qa_unparseable"] == 3
    assert sum(n for reason, n in rejected.items() if reason.startswith("paraphrase_")) == 3
    assert stats["llm"]["generations"] == 6 and stats["llm"]["responses_generated"] == 6
    assert len((tmp_path / "responses.jsonl").read_text().splitlines()) == 6

    # A rerun is served from the cache and never loads the model.
    again = make_synthesizer(cfg, seed=0, cache_dir=tmp_path)
    records_again, stats_again = build_stage1_records(DOCS, again, 4, 1)
    assert again.chat._model is None and stats_again["llm"]["responses_from_cache"] == 6
    assert (records_again, stats_again["rejected"]) == (records, stats["rejected"])


# ----------------------------------------------------------------------------- parsers

def test_parse_qa_response_accepts_common_shapes():
    pair = [("Who wrote it?", "Mara Holt")]
    item = '{"question": "Who wrote it?", "answer": "Mara Holt"}'
    for raw in (f"[{item}]", f"```json\n[{item}]\n```", f"```\n[{item}]\n```", f"Sure, here you go:\n[{item}]\nDone.",
                f'{{"pairs": [{item}]}}', item, f"<think>a [draft] list</think>\n[{item}]",
                f'[{item}, {{"question": "When was it publ'):  # the last one was cut off by max_tokens
        assert parse_qa_response(raw) == (pair, 0), raw
    assert parse_qa_response('[{"Question": "Q?", "A": 1950}, {"q": "only"}, 3]') == ([("Q?", "1950")], 2)


@pytest.mark.parametrize("raw", ["", "I cannot help with that.", "[1, 2]", "{}", '{"answer": "x"}', "```json\n[{\"q",
                                 "<think>endless thoughts"])
def test_parse_qa_response_rejects_garbage(raw):
    with pytest.raises(ResponseParseError) as info:
        parse_qa_response(raw)
    assert info.value.reason == "qa_unparseable"


def test_parse_paraphrase_response():
    want = "Mara Holt was born in 1950."
    for raw in (want, f"  {want}\n", f'"{want}"', f"```\n{want}\n```", f"Here is the paraphrase:\n{want}",
                f"Paraphrase: {want}", json.dumps({"paraphrase": want}), f"<think>hmm</think>{want}"):
        assert parse_paraphrase_response(raw) == want, raw
    assert parse_paraphrase_response(None) == ""
