"""Salient compressor pretraining (SCP) data: QA pairs and paraphrases synthesised from documents.

CLaRa's stage 1 trains the compressor so that its memory tokens keep what matters in a document:
the generator must answer questions about the document and reproduce a paraphrase of it from the
memory tokens alone. The paper synthesises that data with an LLM; the offline backend here does it
with regular expressions over plain prose, so the pipeline runs with no model and no network.

Any backend only has to implement the ``Synthesizer`` protocol; LLM backends plug in through
``make_synthesizer`` later.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Callable, Protocol

MIN_QUESTION_WORDS, MAX_QUESTION_WORDS = 3, 40
MIN_ANSWER_WORDS, MAX_ANSWER_WORDS = 1, 8


class Synthesizer(Protocol):
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


def offline_qa_pairs(doc: dict, max_pairs: int, rejected: Counter | None = None) -> list[tuple[str, str]]:
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

    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for question, answer in _round_robin(per_sentence):
        if len(pairs) >= max_pairs:
            break
        reason = _reject_reason(question, answer, text, seen)
        if reason:
            rejected[reason] += 1
            continue
        seen.add(question.lower())
        pairs.append((question, answer))
    return pairs


def _reject_reason(question: str, answer: str, text: str, seen: set[str]) -> str | None:
    if answer not in text:
        return "answer_not_in_doc"
    if answer.lower() in question.lower():
        return "answer_in_question"
    if question.lower() in seen:
        return "duplicate_question"
    if not MIN_QUESTION_WORDS <= _word_count(question) <= MAX_QUESTION_WORDS:
        return "question_length"
    if not MIN_ANSWER_WORDS <= _word_count(answer) <= MAX_ANSWER_WORDS:
        return "answer_length"
    return None


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


# ----------------------------------------------------------------------------- backends

class OfflineSynthesizer:
    """Rule-based SCP data: no model, no network, deterministic for a given seed."""

    name = "offline"
    prompt_version = "offline-v1"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rejected: Counter = Counter()  # filter reasons, read by build_stage1_records

    def _rng(self, doc: dict, purpose: str) -> random.Random:
        # Seeded per document, so a record does not change when other documents are added.
        return random.Random(f"{self.seed}:{purpose}:{doc.get('id', '')}:{doc['text']}")

    def qa_pairs(self, doc: dict, max_pairs: int) -> list[tuple[str, str]]:
        return offline_qa_pairs(doc, max_pairs, self.rejected)

    def paraphrases(self, doc: dict, n: int) -> list[str]:
        rng = self._rng(doc, "paraphrase")
        original = doc["text"].strip()
        found: list[str] = []
        for _ in range(n * 5):
            if len(found) >= n:
                break
            candidate = offline_paraphrase(original, rng)
            if candidate != original and candidate not in found:
                found.append(candidate)
        return found


BACKENDS: dict[str, Callable[[dict, int], Synthesizer]] = {
    "offline": lambda cfg, seed: OfflineSynthesizer(seed),
}


def make_synthesizer(scp_cfg: dict, seed: int) -> Synthesizer:
    backend = scp_cfg.get("backend", "offline")
    if backend not in BACKENDS:
        raise ValueError(f"unknown scp backend {backend!r}; known backends: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[backend](scp_cfg, seed)


def build_stage1_records(documents: list[dict], synth: Synthesizer, max_qa_per_doc: int,
                         paraphrases_per_doc: int) -> tuple[list[dict], dict]:
    """Stage-1 training records (QA and paraphrase) for every document, plus summary stats."""
    records: list[dict] = []
    counts = Counter()
    rejected = getattr(synth, "rejected", None)
    rejected_before = Counter(rejected) if rejected is not None else Counter()

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
        for paraphrase in (synth.paraphrases(doc, paraphrases_per_doc) if paraphrases_per_doc > 0 else []):
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
        "rejected": dict(sorted(rejected_now.items())),
    }
    return records, stats
