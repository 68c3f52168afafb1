"""Salient compressor pretraining (SCP) data: QA pairs and paraphrases synthesised from documents.

CLaRa's stage 1 trains the compressor so that its memory tokens keep what matters in a document:
the generator must answer questions about the document and reproduce a paraphrase of it from the
memory tokens alone. The paper synthesises that data with an LLM. Three backends implement the
``Synthesizer`` protocol, chosen by params.yaml ``scp.backend``:

- ``offline``: regular expressions over plain prose, so the pipeline runs with no model and no network;
- ``openai``: any OpenAI-compatible chat-completions server (vLLM, TGI, Ollama, llama.cpp server);
- ``transformers``: a local Hugging Face causal LM, greedy decoding.

The two LLM backends share the prompts (``clara_pipeline/prompts.py``), the answer parser, a response
cache on disk and the filters. The filters apply to every backend, and every rejected pair or
paraphrase is counted by reason in the synthesizer's ``rejected`` Counter, which
``build_stage1_records`` reports in its stats.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Protocol

from clara_pipeline.prompts import PARAPHRASE_PROMPT, QA_PROMPT, Prompt

MIN_QUESTION_WORDS, MAX_QUESTION_WORDS = 3, 40
MIN_ANSWER_WORDS, MAX_ANSWER_WORDS = 1, 8


class Synthesizer(Protocol):
    """What build_stage1_records needs of a backend.

    Optional extras it uses when present: ``rejected`` (a Counter of filter reasons, reported in the
    stats), ``prefetch(documents, max_pairs, n, log=None)`` (fetch every model reply up front, e.g.
    concurrently) and ``usage_stats()`` (reported under ``stats["llm"]``).
    """

    name: str
    prompt_version: str  # bump when prompts/rules change, so cached SCP data is regenerated

    def qa_pairs(self, doc: dict, max_pairs: int) -> list[tuple[str, str]]: ...

    def paraphrases(self, doc: dict, n: int) -> list[str]: ...


# ----------------------------------------------------------------------------- text helpers

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_YEAR = re.compile(r"\b(?:1\d{3}|20\d{2}|[1-9]\d{2})\b")
_NUMBER = re.compile(r"\b\d{1,3}(?:,\d{3})+\b|\b\d+(?:\.\d+)?\b")
# A run of capitalised words, allowing "of"/"the"/"and" inside ("Bank of Dunmark").
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:(?:of|the|and|de|von)\s+)?[A-Z][\w'-]*)*")
# Verbs after a sentence-initial name that suggest the name is a person ("Who ...").
_PERSON_VERBS = re.compile(r"^(?:was born|is married|married|wrote|founded|established|directed|recorded|works|"
                           r"worked|has a sibling|is employed|holds|enjoys)")
_STOPWORDS = frozenset("""a an the and or of in on at to for from by with as is are was were be been it its
this that these those has have had also which who whom what when where into about than""".split())


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def content_words(text: str) -> set[str]:
    """Lowercased words minus stopwords: what a paraphrase must preserve."""
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS}


def _word_count(s: str) -> int:
    return len(s.split())


# Characters that count as the same when checking that an answer is copied from the document.
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def _normalise_with_offsets(text: str) -> tuple[str, list[int]]:
    """Lowercased text with punctuation runs and whitespace as single spaces, and for every character
    of the result the index of the original character it came from.

    A comma or point between two digits is kept, so numbers stay exact: "1,200" never matches "1200"
    and "3.5" never matches "35".
    """
    out: list[str] = []
    offsets: list[int] = []
    gap = False
    for i, ch in enumerate(text):
        if ch in ",." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit():
            out.append(ch)
            offsets.append(i)
            continue
        piece = unicodedata.normalize("NFKC", ch.translate(_QUOTES)).lower()
        if not piece.isalnum():
            gap = True
            continue
        if gap and out:
            out.append(" ")
            offsets.append(i)
        gap = False
        out.extend(piece)
        offsets.extend([i] * len(piece))
    return "".join(out), offsets


def normalise(text: str) -> str:
    """Case, punctuation and whitespace folded: the form in which answers and questions are compared."""
    return _normalise_with_offsets(text)[0]


def _contains_tokens(haystack: str, needle: str) -> int:
    """Start of ``needle`` in ``haystack`` (both normalised) on token boundaries, or -1."""
    if not needle:
        return -1
    pos = f" {haystack} ".find(f" {needle} ")
    return pos  # the leading space shifts the index by one, which cancels the -1 of the found space


def find_answer_span(answer: str, text: str) -> str | None:
    """The document's own spelling of ``answer`` if the answer is supported by the document, else None.

    Supported means the normalised answer occurs in the normalised document on whole tokens, so
    "Elwin" does not match "Elwinford" and the year "1950" does not match "19501" or "1,950".
    Returning the document's span (not the model's spelling) keeps training targets copied from the
    document even when the model changed case or quotes.
    """
    answer = answer.strip()
    if answer and answer in text and normalise(answer) and _contains_tokens(normalise(text), normalise(answer)) >= 0:
        return answer  # the common case; also keeps the offline backend's spans unchanged
    wanted = normalise(answer)
    folded, offsets = _normalise_with_offsets(text)
    start = _contains_tokens(folded, wanted)
    if start < 0:
        return None
    end = start + len(wanted) - 1
    return text[offsets[start]:offsets[end] + 1]


def _numbers(text: str) -> set[str]:
    """Numbers in a text, thousands separators dropped ("1,200" and "1200" are the same number)."""
    return {m.group().replace(",", "") for m in _NUMBER.finditer(text)}


# ----------------------------------------------------------------------------- filters (every backend)

@dataclass(frozen=True)
class Filters:
    """Quality bounds on synthesised data; params.yaml ``scp.filters`` overrides any of them."""

    min_question_words: int = MIN_QUESTION_WORDS
    max_question_words: int = MAX_QUESTION_WORDS
    min_answer_words: int = MIN_ANSWER_WORDS
    max_answer_words: int = MAX_ANSWER_WORDS
    min_paraphrase_ratio: float = 0.5     # paraphrase words / document words
    max_paraphrase_ratio: float = 1.8
    min_content_overlap: float = 0.6      # share of the document's content words the paraphrase keeps
    paraphrase_keeps_numbers: bool = True  # every number of the document must survive the paraphrase

    @classmethod
    def from_config(cls, cfg: dict | None) -> Filters:
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown scp.filters keys {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**cfg)


def qa_reject_reason(question: str, answer: str, text: str, seen: set[str],
                     filters: Filters = Filters()) -> str | None:
    """Why a QA pair must be dropped, or None. ``seen`` holds the normalised questions kept so far."""
    if not filters.min_question_words <= _word_count(question) <= filters.max_question_words:
        return "question_length"
    if not filters.min_answer_words <= _word_count(answer) <= filters.max_answer_words:
        return "answer_length"
    if find_answer_span(answer, text) is None:
        return "answer_not_in_doc"
    if _contains_tokens(normalise(question), normalise(answer)) >= 0:
        return "answer_in_question"
    if normalise(question) in seen:
        return "duplicate_question"
    return None


def filter_qa_pairs(candidates: list[tuple[str, str]], text: str, max_pairs: int, rejected: Counter,
                    filters: Filters = Filters()) -> list[tuple[str, str]]:
    """The first ``max_pairs`` candidates that pass the filters; answers spelled as in the document."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for question, answer in candidates:
        if len(pairs) >= max_pairs:
            break
        # Models like to end an answer with a full stop the document span does not need.
        question, answer = " ".join(question.split()), " ".join(answer.split()).rstrip(".,;:!? ")
        reason = qa_reject_reason(question, answer, text, seen, filters)
        if reason:
            rejected[reason] += 1
            continue
        seen.add(normalise(question))
        pairs.append((question, find_answer_span(answer, text)))
    return pairs


def paraphrase_reject_reason(paraphrase: str, text: str, seen: set[str],
                             filters: Filters = Filters()) -> str | None:
    """Why a paraphrase must be dropped, or None. ``seen`` holds the normalised paraphrases kept so far."""
    folded = normalise(paraphrase)
    if not folded:
        return "paraphrase_empty"
    if folded == normalise(text):
        return "paraphrase_identical"
    ratio = _word_count(paraphrase) / max(1, _word_count(text))
    if not filters.min_paraphrase_ratio <= ratio <= filters.max_paraphrase_ratio:
        return "paraphrase_length"
    wanted = content_words(text)
    if wanted and len(wanted & content_words(paraphrase)) / len(wanted) < filters.min_content_overlap:
        return "paraphrase_content"
    if filters.paraphrase_keeps_numbers and not _numbers(text) <= _numbers(paraphrase):
        return "paraphrase_lost_number"
    if folded in seen:
        return "duplicate_paraphrase"
    return None


# ----------------------------------------------------------------------------- QA

def _candidate_spans(sentence: str, title: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of salient spans: numbers/years and capitalised names.

    A capitalised word at sentence start is only a span if it begins the document title, because
    otherwise it is just an ordinary capitalised first word ("The", "In", "It").
    """
    spans: list[tuple[int, int, str]] = []
    taken: list[tuple[int, int]] = []

    def free(a: int, b: int) -> bool:
        return all(b <= s or a >= e for s, e in taken)

    for m in _YEAR.finditer(sentence):
        before = sentence[:m.start()].rstrip().lower()
        if before.endswith(("in", "since", "from", "until")) and "," not in m.group():
            spans.append((m.start(), m.end(), "year"))
            taken.append(m.span())
    for m in _NUMBER.finditer(sentence):
        if free(*m.span()):
            spans.append((m.start(), m.end(), "number"))
            taken.append(m.span())
    for m in _NAME.finditer(sentence):
        start, end, text = m.start(), m.end(), m.group()
        if start == 0:
            if not title or not text.startswith(title):
                # Drop the sentence-initial word and keep any name that follows it in the same run.
                rest = re.match(r"[A-Z][\w'-]*\s+", text)
                if not rest:
                    continue
                start += rest.end()
                text = sentence[start:end]
                if not text[:1].isupper():
                    continue
            else:
                end = start + len(title)
                text = title
        if free(start, end):
            spans.append((start, end, "name"))
            taken.append((start, end))
    spans.sort()
    return spans


def _make_question(sentence: str, span: tuple[int, int, str], title: str) -> str:
    """Wh-question where the rewrite is trivially grammatical, cloze otherwise."""
    start, end, kind = span
    body = sentence.rstrip(".!? ")
    before, after = body[:start], body[end:]
    if kind == "name" and start == 0 and after.startswith(" "):
        # Subject questions need no inversion: "X was born in Y." -> "Who was born in Y?"
        wh = "Who" if _PERSON_VERBS.match(after.strip()) else "What"
        question = f"{wh}{after}?"
    elif kind == "year" and before.rstrip().lower().endswith(" in"):
        # "X was born in 1950." -> "X was born in which year?" (a fronted "In 1950, ..." stays cloze)
        head = before.rstrip()[:-2]
        question = f"{head}in which year{after}?"
        question = question[0].upper() + question[1:]
    else:
        question = f"{before}___{after}."
    # Without the title the question may be unanswerable ("It was published in ___."), unless
    # the title is itself the answer.
    answer = sentence[start:end]
    if title and title.lower() not in question.lower() and title.lower() not in answer.lower():
        question = f"About {title}: {question}"
    return question


def _round_robin(per_sentence: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """First span of every sentence, then second spans, ...: spreads a small budget over the doc."""
    ordered = []
    for depth in range(max((len(x) for x in per_sentence), default=0)):
        for items in per_sentence:
            if depth < len(items):
                ordered.append(items[depth])
    return ordered


def offline_qa_pairs(doc: dict, max_pairs: int, rejected: Counter | None = None,
                     filters: Filters = Filters()) -> list[tuple[str, str]]:
    """Cloze and wh-questions over every salient span of the document's prose."""
    rejected = rejected if rejected is not None else Counter()
    text, title = doc["text"], doc.get("title", "")
    per_sentence = []
    for sentence in split_sentences(text):
        items = []
        for span in _candidate_spans(sentence, title):
            answer = sentence[span[0]:span[1]].strip()
            items.append((_make_question(sentence, span, title), answer))
        per_sentence.append(items)
    return filter_qa_pairs(_round_robin(per_sentence), text, max_pairs, rejected, filters)


# ----------------------------------------------------------------------------- paraphrase

def _lower_first(s: str) -> str:
    # Keep capitals of names ("Mara was ...") but lowercase function words ("It", "The").
    first = s.split(" ", 1)[0]
    function_words = {"It", "Its", "The", "A", "An", "This", "She", "He", "They", "Her", "His", "Their"}
    return s[0].lower() + s[1:] if first in function_words else s


def _fronted_to_trailing(s: str) -> str | None:
    """"In 1950, X was born in Y." -> "X was born in Y in 1950." """
    m = re.match(r"^In (\d{3,4}), (.+)\.$", s)
    if not m:
        return None
    rest = m.group(2)
    return f"{rest[0].upper()}{rest[1:]} in {m.group(1)}."


def _trailing_to_fronted(s: str) -> str | None:
    """"X was born in Y in 1950." -> "In 1950, X was born in Y." """
    m = re.match(r"^(.+?) in (\d{3,4})\.$", s)
    if not m or m.group(1).startswith("In "):
        return None
    return f"In {m.group(2)}, {_lower_first(m.group(1))}."


def _passive_to_active(s: str) -> str | None:
    """"W was written by X." -> "X wrote W." for a few common verbs."""
    verbs = {"written": "wrote", "directed": "directed", "recorded": "recorded", "founded": "founded",
             "established": "established", "built": "built", "painted": "painted"}
    m = re.match(r"^(.+?) was (\w+) by ([A-Z][\w' -]*?)\.$", s)
    if not m or m.group(2) not in verbs:
        return None
    return f"{m.group(3)} {verbs[m.group(2)]} {_lower_first(m.group(1))}."


def _swap_married(s: str) -> str | None:
    m = re.match(r"^([A-Z][\w'-]*(?: [A-Z][\w'-]*)*) is married to ([A-Z][\w'-]*(?: [A-Z][\w'-]*)*)\.$", s)
    return f"{m.group(2)} is married to {m.group(1)}." if m else None


REWRITES: list[Callable[[str], str | None]] = [
    _fronted_to_trailing, _trailing_to_fronted, _passive_to_active, _swap_married,
]


def _rewrite(sentence: str, rng: random.Random) -> str:
    options = [out for rule in REWRITES if (out := rule(sentence)) and out != sentence]
    return rng.choice(options) if options else sentence


def offline_paraphrase(text: str, rng: random.Random) -> str:
    """Keep the first sentence, rewrite some of the rest, shuffle their order."""
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return text
    head, rest = sentences[0], sentences[1:]
    rest = [_rewrite(s, rng) if rng.random() < 0.6 else s for s in rest]
    rng.shuffle(rest)
    out = " ".join([head, *rest])
    if out == text.strip():
        # Nothing changed (e.g. two sentences, no rule applies): force a visible, meaning-free change.
        rewritten = [_rewrite(s, rng) for s in rest]
        if rewritten != rest:
            rest = rewritten
        else:
            rest = rest[::-1] if len(rest) > 1 else [f"Also, {_lower_first(rest[0])}"]
        out = " ".join([head, *rest])
    return out


# ----------------------------------------------------------------------------- offline backend

class OfflineSynthesizer:
    """Rule-based SCP data: no model, no network, deterministic for a given seed."""

    name = "offline"
    prompt_version = "offline-v2"  # v2: shared filters (normalised answer support, paraphrase checks)

    def __init__(self, seed: int = 0, filters: Filters | None = None):
        self.seed = seed
        self.filters = filters or Filters()
        self.rejected: Counter = Counter()  # filter reasons, read by build_stage1_records

    def _rng(self, doc: dict, purpose: str) -> random.Random:
        # Seeded per document, so a record does not change when other documents are added.
        return random.Random(f"{self.seed}:{purpose}:{doc.get('id', '')}:{doc['text']}")

    def qa_pairs(self, doc: dict, max_pairs: int) -> list[tuple[str, str]]:
        return offline_qa_pairs(doc, max_pairs, self.rejected, self.filters)

    def paraphrases(self, doc: dict, n: int) -> list[str]:
        rng = self._rng(doc, "paraphrase")
        original = doc["text"].strip()
        found: list[str] = []
        tried: set[str] = set()
        for _ in range(n * 5):
            if len(found) >= n:
                break
            candidate = offline_paraphrase(original, rng)
            # Repeats are misses of the random search, not rejections: count each distinct candidate once.
            if candidate == original or candidate in tried:
                continue
            tried.add(candidate)
            reason = paraphrase_reject_reason(candidate, original, {normalise(f) for f in found}, self.filters)
            if reason:
                self.rejected[reason] += 1
                continue
            found.append(candidate)
        return found


# ----------------------------------------------------------------------------- LLM answers: parsing

class SynthesisError(RuntimeError):
    """An LLM backend could not produce an answer for a document (the message names the document)."""


class ResponseParseError(ValueError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # the rejection reason counted in ``rejected``


_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.S)
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S)  # reasoning models' scratchpad, never part of the answer
_KEY_ALIASES = {"question": ("question", "q", "query"), "answer": ("answer", "a", "answer_span", "span")}


def _strip_wrapping(raw: str) -> str:
    text = _THINK.sub("", raw or "").strip()
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1).strip()
    if text.startswith("```"):  # an opening fence whose closing fence was cut off by max_tokens
        return text.split("\n", 1)[1].strip() if "\n" in text else ""
    return text


def _field(item: dict, name: str) -> str | None:
    lowered = {str(k).lower(): v for k, v in item.items()}
    for alias in _KEY_ALIASES[name]:
        value = lowered.get(alias)
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # {"answer": 1950}
    return None


def _salvage_objects(text: str) -> list:
    """Every JSON object in ``text``: recovers the complete items of a list cut off by max_tokens."""
    decoder = json.JSONDecoder()
    found, i = [], text.find("{")
    while i >= 0:
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = text.find("{", end)
    return found


def parse_qa_response(raw: str) -> tuple[list[tuple[str, str]], int]:
    """(question, answer) pairs from a model's reply, and how many list items were malformed.

    Accepts a JSON list of {"question", "answer"} objects, inside ```json fences or surrounded by prose,
    an object wrapping such a list ({"pairs": [...]}), or a list cut off mid-way. Raises
    ResponseParseError("qa_unparseable") when no pair can be read.
    """
    text = _strip_wrapping(raw)
    data = None
    for candidate in (text, text[text.find("["):text.rfind("]") + 1] if "[" in text else ""):
        try:
            data = json.loads(candidate)
            break
        except ValueError:
            continue
    if isinstance(data, dict):
        if _field(data, "question") is not None:
            data = [data]
        else:
            data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        data = _salvage_objects(text)
        if not any(_field(d, "question") is not None for d in data):
            raise ResponseParseError("qa_unparseable")
    pairs, malformed = [], 0
    for item in data:
        question = _field(item, "question") if isinstance(item, dict) else None
        answer = _field(item, "answer") if isinstance(item, dict) else None
        if question is None or answer is None:
            malformed += 1
            continue
        pairs.append((question.strip(), answer.strip()))
    if not pairs:
        raise ResponseParseError("qa_unparseable")
    return pairs, malformed


# "Here is the paraphrase:" on a line of its own, or a "Paraphrase:" label in front of the text.
_LABEL_LINE = re.compile(r"^\s*(?:here is|here's|sure|paraphrase|rewritten|restated)[^\n]{0,80}:\s*\n", re.I)
_LABEL = re.compile(r"^\s*(?:paraphrase|paraphrased document|rewritten document|rewrite)\s*:\s*", re.I)


def parse_paraphrase_response(raw: str) -> str:
    """The paraphrase in a model's reply: fences, a leading "Here is the paraphrase:" line, surrounding
    quotes and JSON wrapping ({"paraphrase": "..."}) removed; whitespace collapsed."""
    text = _strip_wrapping(raw)
    if text[:1] in "{\"":
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, str):
            text = data
        elif isinstance(data, dict):
            text = next((v for k, v in data.items() if isinstance(v, str) and k.lower() in
                         ("paraphrase", "text", "rewrite", "content")), text)
    text = _LABEL.sub("", _LABEL_LINE.sub("", text, count=1)).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return " ".join(text.split())


# ----------------------------------------------------------------------------- LLM answers: cache

class ResponseCache:
    """Raw model replies, keyed by ``cache_key``, in ``<cache_dir>/responses.jsonl``.

    Every reply is appended and flushed to disk as soon as it arrives, so a run that crashes (or is
    killed) half-way keeps everything it paid for. Replies are stored raw, before parsing and filtering,
    so a better parser or filter reuses them. With no cache_dir the cache lives in memory only.
    """

    FILE_NAME = "responses.jsonl"

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.path = Path(cache_dir) / self.FILE_NAME if cache_dir else None
        self._entries: dict[str, str] = {}
        self._lock = threading.Lock()
        self.unreadable_lines = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            data = f.read()
        for line in data.splitlines():
            try:
                entry = json.loads(line)
                self._entries[entry["key"]] = entry["response"]
            except (ValueError, KeyError, TypeError):
                self.unreadable_lines += 1  # e.g. the half-written last line of a crashed run
        if data and not data.endswith(b"\n"):
            # Terminate a half-written line, or the next entry would be glued onto it and lost too.
            with open(self.path, "ab") as f:
                f.write(b"\n")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> str | None:
        return self._entries.get(key)

    def put(self, key: str, response: str, meta: dict | None = None) -> None:
        line = json.dumps({"key": key, **(meta or {}), "response": response}, ensure_ascii=False) + "\n"
        with self._lock:
            self._entries[key] = response
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())


def document_hash(doc: dict) -> str:
    """Hash of what the prompts show of a document (title and text)."""
    return hashlib.sha256(f"{doc.get('title', '')}\n{doc['text']}".encode()).hexdigest()


def cache_key(doc: dict, prompt: Prompt, variant: int, model: str, settings: dict) -> str:
    """Document content + prompt (version and template) + model + kind + generation settings."""
    fields_ = {"doc": document_hash(doc), "kind": prompt.kind, "variant": variant, "prompt_version": prompt.version,
               "prompt": prompt.fingerprint(), "model": model, "settings": settings}
    return hashlib.sha256(json.dumps(fields_, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- LLM clients

ChatFunction = Callable[[list[dict], str], str]  # (messages, document id) -> reply text

MAX_RETRY_AFTER_S = 600.0  # a server asking for longer than this is treated as asking for this


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class OpenAIChatClient:
    """POST ``{base_url}/chat/completions`` of an OpenAI-compatible server, with retries.

    429, 408, 5xx, timeouts and connection errors are retried with exponential back-off and jitter
    (or after the server's Retry-After); other HTTP errors (400, 401, 404, ...) fail at once, since
    repeating the request cannot fix them. Thread-safe: the synthesizer's worker threads share one client.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout_s: float = 120.0,
                 max_retries: int = 5, backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 temperature: float = 0.0, max_tokens: int = 1024, extra_body: dict | None = None,
                 sleep: Callable[[float], None] = time.sleep, seed: int = 0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.temperature, self.max_tokens = temperature, max_tokens
        self.extra_body = dict(extra_body or {})
        self._sleep = sleep
        self._rng = random.Random(seed)  # jitter only
        self._lock = threading.Lock()
        self.stats: Counter = Counter({"http_requests": 0, "retries": 0})

    def settings(self) -> dict:
        """What changes the reply besides model and prompt: part of the cache key."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "extra_body": self.extra_body}

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt)
        with self._lock:
            # Jitter spreads the retries of parallel workers that failed together.
            return delay * self._rng.uniform(0.5, 1.0)

    def __call__(self, messages: list[dict], doc_id: str) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens, **self.extra_body}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempts = self.max_retries + 1
        last_error = ""
        for attempt in range(attempts):
            retry_after = None
            self._count("http_requests")
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = response.read()
                return self._reply_text(payload, doc_id)
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if not (e.code in (408, 429) or e.code >= 500):
                    raise SynthesisError(f"document {doc_id!r}: {self.url} answered HTTP {e.code} "
                                         f"(not retried): {detail}") from e
                last_error = f"HTTP {e.code}: {detail}"
                retry_after = _retry_after_seconds(e.headers.get("Retry-After") if e.headers else None)
            except (urllib.error.URLError, HTTPException, OSError) as e:  # refused, reset, DNS, timeout
                last_error = f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
            if attempt + 1 < attempts:
                self._count("retries")
                self._sleep(self.backoff_delay(attempt, retry_after))
        raise SynthesisError(f"document {doc_id!r}: chat completion at {self.url} failed after {attempts} "
                             f"attempts; last error: {last_error}")

    def _reply_text(self, payload: bytes, doc_id: str) -> str:
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise SynthesisError(f"document {doc_id!r}: {self.url} sent no chat completion "
                                 f"({type(e).__name__}): {payload[:300]!r}") from e
        if isinstance(content, list):  # some servers send content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return content or ""  # null content (a refusal) is an empty reply, rejected by the parser


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        return " ".join(error.read(300).decode("utf-8", "replace").split()) or str(error.reason)
    except Exception:  # the body is only decoration for the message
        return str(error.reason)


class TransformersChatModel:
    """A local Hugging Face causal LM answering chat messages with greedy decoding.

    The model loads on the first request, so a rerun served entirely from the cache never loads it.
    Requests run one at a time (a lock), since one model on one device gains nothing from threads.
    """

    def __init__(self, model_path: str, *, max_new_tokens: int = 512, device: str | None = None,
                 dtype: str | None = None):
        self.model_path = str(model_path)
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.dtype = dtype
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()
        self.stats: Counter = Counter({"generations": 0})

    def settings(self) -> dict:
        return {"decoding": "greedy", "max_new_tokens": self.max_new_tokens}

    def _load(self) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {}
        if self.dtype:
            dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
            # transformers renamed torch_dtype to dtype in 4.56
            major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
            kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._model = AutoModelForCausalLM.from_pretrained(self.model_path, **kwargs).to(device).eval()

    def prompt_text(self, messages: list[dict]) -> str:
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # No chat template (a base model): a plain transcript ending where the reply starts.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(lines) + "\n\nAssistant:"

    def __call__(self, messages: list[dict], doc_id: str) -> str:
        import torch

        with self._lock:
            try:
                if self._model is None:
                    self._load()
                tok, model = self._tokenizer, self._model
                text = self.prompt_text(messages)
                # A chat template already adds BOS; a plain transcript gets the tokenizer's usual specials.
                inputs = tok(text, return_tensors="pt", add_special_tokens=not getattr(tok, "chat_template", None))
                inputs = {k: v.to(model.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
                pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
                with torch.no_grad():
                    out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=pad_id)
                self.stats["generations"] += 1
                return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            except Exception as e:
                raise SynthesisError(f"document {doc_id!r}: generation with {self.model_path} failed: "
                                     f"{type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------- LLM synthesizer

class LLMSynthesizer:
    """QA pairs and paraphrases from a chat model, through the response cache and the filters.

    ``prefetch`` asks the model for every document's replies with ``concurrency`` worker threads;
    ``qa_pairs`` and ``paraphrases`` then parse and filter those replies one document at a time, so
    records come out in document order whatever the concurrency. Called without ``prefetch``, they
    request what they need themselves.
    """

    def __init__(self, name: str, chat: ChatFunction, model: str, *, settings: dict | None = None,
                 cache: ResponseCache | None = None, concurrency: int = 1, filters: Filters | None = None,
                 qa_prompt: Prompt = QA_PROMPT, paraphrase_prompt: Prompt = PARAPHRASE_PROMPT):
        self.name = name
        self.chat = chat
        self.model = model
        self.settings = dict(settings or {})
        self.cache = cache if cache is not None else ResponseCache(None)
        self.concurrency = max(1, int(concurrency))
        self.filters = filters or Filters()
        self.qa_prompt, self.paraphrase_prompt = qa_prompt, paraphrase_prompt
        self.prompt_version = f"{qa_prompt.version}+{paraphrase_prompt.version}"
        self.rejected: Counter = Counter()
        self.usage: Counter = Counter()  # responses_generated, responses_from_cache
        self._served: set[str] = set()  # keys already counted in usage
        self._lock = threading.Lock()

    def _requests(self, doc: dict, max_pairs: int, n: int) -> list[tuple[Prompt, int]]:
        wanted = [(self.qa_prompt, 0)] if max_pairs > 0 else []
        return wanted + [(self.paraphrase_prompt, i) for i in range(max(0, n))]

    def response(self, doc: dict, prompt: Prompt, variant: int = 0) -> str:
        """The model's raw reply for one (document, prompt, variant): from the cache, else generated."""
        key = cache_key(doc, prompt, variant, self.model, self.settings)
        cached = self.cache.get(key)
        if cached is not None:
            with self._lock:
                if key not in self._served:
                    self._served.add(key)
                    self.usage["responses_from_cache"] += 1
            return cached
        reply = self.chat(prompt.messages(doc, variant), str(doc.get("id", "")))
        self.cache.put(key, reply, {"doc_id": doc.get("id"), "kind": prompt.kind, "variant": variant,
                                    "model": self.model, "prompt_version": prompt.version, "created": time.time()})
        with self._lock:
            self._served.add(key)
            self.usage["responses_generated"] += 1
        return reply

    def prefetch(self, documents: list[dict], max_pairs: int, n: int,
                 log: Callable[[str], None] | None = None) -> None:
        """Fetch every reply the documents need, ``concurrency`` at a time; stops at the first failure."""
        todo: dict[str, tuple[dict, Prompt, int]] = {}
        for doc in documents:
            for prompt, variant in self._requests(doc, max_pairs, n):
                key = cache_key(doc, prompt, variant, self.model, self.settings)
                if key not in self.cache:
                    todo.setdefault(key, (doc, prompt, variant))  # identical documents are asked once
        if not todo:
            return
        if log:
            log(f"scp: {len(todo)} {self.name} requests to make ({self.concurrency} at a time), "
                f"{len(self.cache)} replies cached")
        if self.concurrency == 1:
            for done, job in enumerate(todo.values(), 1):
                self.response(*job)
                if log and done % 50 == 0:
                    log(f"scp: {done}/{len(todo)} replies")
            return
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="scp-llm")
        try:
            futures = [pool.submit(self.response, *job) for job in todo.values()]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()
        finally:
            # On failure, drop the queued requests; replies that already arrived are in the cache.
            pool.shutdown(wait=True, cancel_futures=True)
        if log:
            log(f"scp: {len(todo)}/{len(todo)} replies")

    def qa_pairs(self, doc: dict, max_pairs: int) -> list[tuple[str, str]]:
        if max_pairs <= 0:
            return []
        try:
            candidates, malformed = parse_qa_response(self.response(doc, self.qa_prompt))
        except ResponseParseError as e:
            self.rejected[e.reason] += 1
            return []
        if malformed:
            self.rejected["qa_malformed_item"] += malformed
        return filter_qa_pairs(candidates, doc["text"], max_pairs, self.rejected, self.filters)

    def paraphrases(self, doc: dict, n: int) -> list[str]:
        found: list[str] = []
        for variant in range(max(0, n)):
            text = parse_paraphrase_response(self.response(doc, self.paraphrase_prompt, variant))
            reason = paraphrase_reject_reason(text, doc["text"], {normalise(f) for f in found}, self.filters)
            if reason:
                self.rejected[reason] += 1
                continue
            found.append(text)
        return found

    def usage_stats(self) -> dict:
        stats = {"model": self.model, **{k: self.usage[k] for k in ("responses_generated", "responses_from_cache")},
                 "cache_file": str(self.cache.path) if self.cache.path else None}
        stats.update(getattr(self.chat, "stats", {}))  # openai: http_requests, retries; transformers: generations
        return stats


# ----------------------------------------------------------------------------- backends

def _llm_cfg(scp_cfg: dict) -> dict:
    cfg = dict(scp_cfg.get("llm") or {})
    for secret in ("api_key", "key", "token"):
        if secret in cfg:
            raise ValueError(f"params.yaml scp.llm.{secret}: keys never go into params.yaml (it is versioned and "
                             f"logged); put the key in the environment variable named by scp.llm.api_key_env "
                             f"(default CLARA_LLM_API_KEY)")
    return cfg


def _setting(cfg: dict, name: str, env_default: str, required: bool = True) -> str | None:
    """``cfg[name]`` if given, else the environment variable named by ``cfg[name + '_env']``."""
    if cfg.get(name):
        return str(cfg[name])
    env = cfg.get(f"{name}_env", env_default)
    value = os.environ.get(env)
    if required and not value:
        raise ValueError(f"scp.backend needs scp.llm.{name} in params.yaml or the environment variable {env}")
    return value


def _cache_for(cfg: dict, cache_dir: str | os.PathLike | None) -> ResponseCache:
    return ResponseCache(cache_dir if cache_dir is not None else cfg.get("cache_dir"))


def make_openai_synthesizer(scp_cfg: dict, seed: int, cache_dir: str | os.PathLike | None = None,
                            sleep: Callable[[float], None] = time.sleep) -> LLMSynthesizer:
    cfg = _llm_cfg(scp_cfg)
    model = _setting(cfg, "model", "CLARA_LLM_MODEL")
    client = OpenAIChatClient(
        _setting(cfg, "base_url", "CLARA_LLM_BASE_URL"), model,
        os.environ.get(cfg.get("api_key_env", "CLARA_LLM_API_KEY")) or None,
        timeout_s=float(cfg.get("timeout_s", 120)), max_retries=int(cfg.get("max_retries", 5)),
        backoff_s=float(cfg.get("backoff_s", 1.0)), backoff_max_s=float(cfg.get("backoff_max_s", 60.0)),
        temperature=float(cfg.get("temperature", 0.0)), max_tokens=int(cfg.get("max_tokens", 1024)),
        extra_body=cfg.get("extra_body"), sleep=sleep, seed=seed)
    return LLMSynthesizer("openai", client, model, settings=client.settings(), cache=_cache_for(cfg, cache_dir),
                          concurrency=int(cfg.get("concurrency", 4)),
                          filters=Filters.from_config(scp_cfg.get("filters")))


def make_transformers_synthesizer(scp_cfg: dict, seed: int,
                                  cache_dir: str | os.PathLike | None = None) -> LLMSynthesizer:
    cfg = _llm_cfg(scp_cfg)
    if not cfg.get("model_path"):
        raise ValueError("scp.backend: transformers needs scp.llm.model_path (a local Hugging Face model folder)")
    model_path = str(cfg["model_path"])
    chat = TransformersChatModel(model_path, max_new_tokens=int(cfg.get("max_new_tokens", 512)),
                                 device=cfg.get("device"), dtype=cfg.get("dtype"))
    # The model's name in the cache key: scp.llm.model if given, else the path as written in params.yaml.
    return LLMSynthesizer("transformers", chat, str(cfg.get("model") or model_path), settings=chat.settings(),
                          cache=_cache_for(cfg, cache_dir), concurrency=1,
                          filters=Filters.from_config(scp_cfg.get("filters")))


BACKENDS: dict[str, Callable[..., Synthesizer]] = {
    "offline": lambda cfg, seed, cache_dir=None: OfflineSynthesizer(seed, Filters.from_config(cfg.get("filters"))),
    "openai": make_openai_synthesizer,
    "transformers": make_transformers_synthesizer,
}


def make_synthesizer(scp_cfg: dict, seed: int, cache_dir: str | os.PathLike | None = None) -> Synthesizer:
    """The backend named by ``scp_cfg['backend']`` (default offline).

    ``cache_dir`` holds the LLM backends' response cache (the pipeline passes a folder under
    artifacts/); params.yaml ``scp.llm.cache_dir`` is used when it is None. Offline ignores it.
    """
    backend = scp_cfg.get("backend", "offline")
    if backend not in BACKENDS:
        raise ValueError(f"unknown scp backend {backend!r}; known backends: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[backend](scp_cfg, seed, cache_dir)


def build_stage1_records(documents: list[dict], synth: Synthesizer, max_qa_per_doc: int,
                         paraphrases_per_doc: int, log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Stage-1 training records (QA and paraphrase) for every document, plus summary stats."""
    records: list[dict] = []
    counts = Counter()
    rejected = getattr(synth, "rejected", None)
    rejected_before = Counter(rejected) if rejected is not None else Counter()
    prefetch = getattr(synth, "prefetch", None)
    if prefetch is not None:
        # LLM backends fetch all replies up front (concurrently); the loop below only parses and filters.
        prefetch(documents, max_qa_per_doc, paraphrases_per_doc, log=log)

    def add(doc: dict, data_type: str, question: str, answer: str) -> None:
        records.append({"id": f"scp-{len(records)}", "doc_id": doc["id"], "doc": doc["text"],
                        "title": doc.get("title", ""), "data_type": data_type,
                        "question": question, "answer": answer})
        counts[data_type] += 1

    for doc in documents:
        pairs = synth.qa_pairs(doc, max_qa_per_doc) if max_qa_per_doc > 0 else []
        if not pairs:
            counts["docs_without_qa"] += 1
        for question, answer in pairs:
            add(doc, "qa", question, answer)
        paraphrases = synth.paraphrases(doc, paraphrases_per_doc) if paraphrases_per_doc > 0 else []
        if paraphrases_per_doc > 0 and not paraphrases:
            counts["docs_without_paraphrase"] += 1
        for paraphrase in paraphrases:
            add(doc, "paraphrase", "", paraphrase)

    rejected_now = (Counter(rejected) - rejected_before) if rejected is not None else Counter()
    stats = {
        "synthesizer": synth.name,
        "prompt_version": synth.prompt_version,
        "docs": len(documents),
        "records": len(records),
        "qa": counts["qa"],
        "paraphrase": counts["paraphrase"],
        "docs_without_qa": counts["docs_without_qa"],
        "docs_without_paraphrase": counts["docs_without_paraphrase"],
        "rejected": dict(sorted(rejected_now.items())),
    }
    usage_stats = getattr(synth, "usage_stats", None)
    if usage_stats is not None:
        stats["llm"] = usage_stats()
    return records, stats
