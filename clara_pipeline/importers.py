"""Importers for real corpora and QA sets: plain text, HotpotQA, MuSiQue, 2WikiMultihopQA, FlashRAG,
CLaRa's own stage-1 JSONL and BEIR, all turned into the project's document and question schemas.

Every importer produces

* documents ``{"id", "title", "text", "source", "source_id"?}``: ``id`` is a content hash
  (``doc_id(title, text)``), so the same passage gets the same id whatever file or order it came from;
  ``source`` says where it was first read (``"file.jsonl:12"``); ``source_id`` keeps the source's own id;
* questions ``{"id", "question", "answers", "gold_doc_ids", "type"?, "source"}`` as written by
  ``clara_pipeline.corpus``: gold references of the source (titles in HotpotQA / 2Wiki, paragraphs in
  MuSiQue, corpus ids in BEIR / FlashRAG) are mapped onto the hashed document ids;
* for CLaRa stage-1 JSONL also stage-1 records in the schema of ``synthesis.build_stage1_records``.

Bad records never stop an import and are never dropped silently: each one becomes an error entry that
names the file, the line (the row for Parquet; also the item for JSON-list files, which are often one
line) and the reason; valid records around it are kept. ``strict=True`` raises a ValueError on the first
bad record instead. ``import_corpus(spec)`` is the one entry point; ``write_import`` writes the result in
the layout of the ``raw_corpus`` stage.

Counting rule, per record kind (documents, questions, qrels):
``read == kept + merged + skipped + rejected``, where

* merged: a paragraph that comes inside a question (HotpotQA / 2Wiki / MuSiQue context, a CLaRa
  stage-1 passage) and is already a document. Such repeats are how these formats work, so they are
  references to the kept document, not duplicates;
* skipped: a valid record the spec leaves out on purpose (MuSiQue unanswerable questions, BEIR queries
  with no relevant judgement in the chosen split);
* rejected: everything in ``REASONS``, including a stand-alone document whose title and text repeat an
  earlier one (``duplicate_content``; the first is kept and the repeat's source id still resolves to it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from clara_pipeline.jsonl import write_jsonl

SOURCES = ("jsonl", "parquet", "csv", "hotpotqa", "musique", "2wiki", "flashrag", "clara_stage1", "beir")

REASONS = {
    "malformed_json": "the line (or JSON list) is not valid JSON",
    "not_an_object": "valid JSON, but not a JSON object",
    "malformed_row": "a CSV/TSV row that cannot be parsed or has the wrong number of columns",
    "non_utf8": "bytes that are not UTF-8 (or a lone surrogate escape that cannot be written as UTF-8)",
    "missing_field": "a required field is absent or null",
    "invalid_field": "a field has the wrong type or shape",
    "empty_text": "a document or question text is empty after stripping whitespace",
    "no_answer": "a question without any non-empty answer",
    "oversized": "a document longer than max_doc_chars or a question longer than max_question_chars",
    "duplicate_id": "a source id seen before with different content (the first is kept)",
    "duplicate_content": "same content as an earlier record (the first is kept)",
    "unresolved_gold": "a gold reference (supporting title, paragraph or corpus id) that names no document",
}

DEFAULT_MAX_DOC_CHARS = 200_000      # catches junk such as a whole book on one line when documents are kept whole
# with chunking on (doc_max_tokens) a long document becomes passages, so the default guard only refuses the
# absurd (a 50 MB line); an explicit max_doc_chars still applies
DEFAULT_MAX_DOC_CHARS_CHUNKED = 50_000_000
DEFAULT_MAX_QUESTION_CHARS = 4_000
DEFAULT_EVAL_FRACTION = 0.1
MAX_ERRORS_IN_REPORT_FILE = 200      # import_report.json shows the first ones; rejected.jsonl has all of them

_BOM = b"\xef\xbb\xbf"
# str.encode("utf-8") fails on these; they come from surrogateescape-decoded bytes or "\udXXX" escapes.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Keys of the embedded generator's params section: allowed next to an importer spec, not used by it.
_EMBEDDED_KEYS = {"num_people", "num_places", "num_organisations", "num_works",
                  "num_train_questions"}
_SPEC_KEYS = {"source", "path", "paths", "corpus_path", "split", "max_doc_chars", "max_question_chars",
              "doc_max_tokens", "overlap", "tokenizer", "eval_fraction", "num_eval_questions", "seed",
              "strict", "keep_unanswerable"}


# ----------------------------------------------------------------------------- ids

def doc_id(title: str, text: str) -> str:
    """Stable document id: a hash of the stripped title and text.

    16 hex digits (64 bits) rather than 12: with 48 bits a 21M-passage Wikipedia dump would have a
    real chance of a collision.
    """
    return "doc-" + hashlib.sha1(f"{title}\n{text}".encode("utf-8")).hexdigest()[:16]


def _hash16(*parts: str) -> str:
    return hashlib.sha1("\n".join(parts).encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- report

@dataclass(frozen=True)
class Loc:
    """Where a record was read: file plus line, and the item of a JSON list or the row of a Parquet file."""

    file: str
    line: int
    item: int | None = None   # 1-based element of a JSON-list file
    row: int | None = None    # 1-based row of a Parquet file (line is then the row too)

    @property
    def where(self) -> str:
        if self.row is not None:
            return f"{self.file}:row {self.row}"
        return f"{self.file}:{self.line}" + (f" (item {self.item})" if self.item is not None else "")

    @property
    def source(self) -> str:
        """Short provenance for output records: the file name only, so outputs do not depend on the machine."""
        return Loc(Path(self.file).name, self.line, self.item, self.row).where


@dataclass
class RecordError:
    file: str
    line: int
    reason: str
    message: str
    kind: str                 # "documents" | "questions" | "qrels" | "paraphrases"
    item: int | None = None
    row: int | None = None

    @property
    def where(self) -> str:
        return Loc(self.file, self.line, self.item, self.row).where

    def as_dict(self) -> dict:
        out = {"file": self.file, "line": self.line, "reason": self.reason, "message": self.message,
               "kind": self.kind, "where": self.where}
        if self.item is not None:
            out["item"] = self.item
        if self.row is not None:
            out["row"] = self.row
        return out


class _Bad(Exception):
    """A record fails validation; caught by the record loop and turned into a RecordError."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class ImportReport:
    """Counts and errors of one import. ``strict`` turns the first rejection into a ValueError."""

    KINDS = ("documents", "questions", "qrels", "paraphrases")  # the last two only appear when read

    def __init__(self, source: str, strict: bool = False):
        self.source, self.strict = source, strict
        self.files: list[str] = []
        self.read: Counter = Counter()
        self.kept: Counter = Counter()
        self.merged: Counter = Counter()
        self.skipped: Counter = Counter()
        self.rejected: Counter = Counter()
        self.rejected_by_reason: Counter = Counter()
        self.skipped_by_reason: Counter = Counter()
        self.errors: list[RecordError] = []
        self.extra: dict[str, Any] = {}

    def reject(self, loc: Loc, kind: str, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        error = RecordError(loc.file, loc.line, reason, message, kind, loc.item, loc.row)
        if self.strict:
            raise ValueError(f"{error.where}: {reason}: {message}")
        self.errors.append(error)
        self.rejected[kind] += 1
        self.rejected_by_reason[reason] += 1

    def skip(self, kind: str, reason: str, n: int = 1) -> None:
        self.skipped[kind] += n
        self.skipped_by_reason[reason] += n

    def as_dict(self) -> dict:
        kinds = [k for k in self.KINDS if self.read[k] or k in ("documents", "questions")]
        return {
            "source": self.source,
            "strict": self.strict,
            "files": list(self.files),
            "counts": {k: {"read": self.read[k], "kept": self.kept[k], "merged": self.merged[k],
                           "skipped": self.skipped[k], "rejected": self.rejected[k]} for k in kinds},
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            **self.extra,
            "errors": [e.as_dict() for e in self.errors],
        }


@dataclass
class ImportResult:
    documents: list[dict]
    questions_train: list[dict]
    questions_eval: list[dict]
    stage1: list[dict]
    report: dict

    @property
    def errors(self) -> list[dict]:
        return self.report["errors"]


# ----------------------------------------------------------------------------- field helpers

def _check_unicode(value: str, name: str) -> None:
    if _SURROGATE.search(value):
        raise _Bad("non_utf8", f"field {name!r} holds text that cannot be written as UTF-8 "
                               "(bytes that are not UTF-8, or a lone surrogate escape)")


def _str_field(obj: dict, key: str, *, required: bool = True) -> str:
    """A stripped string field. Absent or null is missing (or "" when optional); bytes must be UTF-8."""
    value = obj.get(key)
    if value is None:
        if required:
            raise _Bad("missing_field", f"missing field {key!r}")
        return ""
    if isinstance(value, bytes):  # Parquet binary columns
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad("non_utf8", f"field {key!r}: byte {value[exc.start]:#04x} at offset {exc.start} "
                                   "is not UTF-8") from None
    if not isinstance(value, str):
        raise _Bad("invalid_field", f"field {key!r} must be a string, got {type(value).__name__}")
    _check_unicode(value, key)
    return value.strip()


def _id_field(obj: dict, key: str, *, required: bool = True) -> str | None:
    """Source ids may be strings or integers; both become strings."""
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise _Bad("missing_field", f"missing field {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad("invalid_field", f"field {key!r} must be a string or an integer, got {type(value).__name__}")
    value = str(value).strip()
    _check_unicode(value, key)
    return value


def _answers_field(obj: dict, key: str, *, required: bool = True) -> list[str]:
    """A string or list of strings; stripped, empties dropped, order kept, repeats removed."""
    value = obj.get(key)
    if value is None:
        if required:
            raise _Bad("missing_field", f"missing field {key!r}")
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        raise _Bad("invalid_field", f"field {key!r} must be a string or a list of strings")
    out: list[str] = []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)  # numeric answers ("1998") sometimes come unquoted
        if not isinstance(v, str):
            raise _Bad("invalid_field", f"field {key!r} must hold strings, got {type(v).__name__}")
        _check_unicode(v, key)
        if v.strip() and v.strip() not in out:
            out.append(v.strip())
    return out


def _list_field(obj: dict, key: str) -> list:
    value = obj.get(key)
    if value is None:
        raise _Bad("missing_field", f"missing field {key!r}")
    if not isinstance(value, list):
        raise _Bad("invalid_field", f"field {key!r} must be a list, got {type(value).__name__}")
    return value


def _join_sentences(sentences: list) -> str:
    """HotpotQA sentences carry their own leading space, 2Wiki's do not: add one only where none is."""
    out = ""
    for s in sentences:
        if not isinstance(s, str):
            raise _Bad("invalid_field", f"context sentences must be strings, got {type(s).__name__}")
        if out and s and not out[-1].isspace() and not s[0].isspace():
            out += " "
        out += s
    return out.strip()


# ----------------------------------------------------------------------------- chunking

Tokenizer = Any  # None (whitespace words), a Hugging Face fast tokenizer, or a callable text -> tokens


def load_tokenizer(name: str | None) -> Tokenizer:
    """``None``/"whitespace": split on whitespace; anything else is a model reference for
    ``config.resolve_model_path`` ("embedded-minilm" or a local folder) whose tokenizer is loaded."""
    if name in (None, "", "whitespace"):
        return None
    from transformers import AutoTokenizer

    from clara_pipeline.config import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(name))


def token_spans(text: str, tokenizer: Tokenizer = None) -> list[tuple[int, int]]:
    """(start, end) character offsets of every token of ``text``.

    ``tokenizer`` may be None (whitespace-separated words), a Hugging Face *fast* tokenizer (its offset
    mapping is used, special tokens are not added, which is how the model encodes documents), or a
    callable returning either (start, end) pairs or token strings that are substrings of the text in
    order (e.g. ``str.split``).
    """
    if tokenizer is None:
        return [m.span() for m in re.finditer(r"\S+", text)]
    if hasattr(tokenizer, "backend_tokenizer"):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(span) for span in enc["offset_mapping"]]
    if hasattr(tokenizer, "tokenize") and hasattr(tokenizer, "convert_tokens_to_ids"):
        raise ValueError("a slow Hugging Face tokenizer has no character offsets; load it with use_fast=True")
    tokens = list(tokenizer(text))
    if tokens and all(isinstance(t, (tuple, list)) and len(t) == 2 for t in tokens):
        return [(int(a), int(b)) for a, b in tokens]
    spans, pos = [], 0
    for token in tokens:
        token = str(token)
        start = text.find(token, pos)
        if start < 0:
            raise ValueError(f"tokenizer returned {token!r}, which does not occur in the text after offset {pos}; "
                             "give a callable that returns substrings or (start, end) spans, or a fast HF tokenizer")
        spans.append((start, start + len(token)))
        pos = start + len(token)
    return spans


def chunk_text(text: str, tokenizer: Tokenizer, max_tokens: int, overlap: int = 0) -> list[str]:
    """Split ``text`` into windows of at most ``max_tokens`` tokens, consecutive windows sharing at least
    ``overlap`` tokens. A text that fits is returned unchanged (one chunk).

    Window edges move back to the start of a word where one is within the window (so a subword tokenizer
    re-tokenises a chunk exactly as it tokenised that part of the document, and no word is cut), which
    can make the overlap larger than asked, never a chunk longer.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap must be in [0, max_tokens), got overlap={overlap}, max_tokens={max_tokens}")
    spans = token_spans(text, tokenizer)
    n = len(spans)
    if n <= max_tokens:
        return [text]
    # Token i starts a word if whitespace (or nothing) precedes it, or the token itself begins with a space.
    starts = [i == 0 or spans[i][0] > spans[i - 1][1] or text[spans[i][0]:spans[i][0] + 1].isspace()
              for i in range(n)] + [True]

    def snap(i: int, floor: int) -> int:
        """The last word start in (floor, i], or i itself when the window holds none."""
        j = i
        while j > floor + 1 and not starts[j]:
            j -= 1
        return j if starts[j] and j > floor else i

    chunks, start = [], 0
    while True:
        end = min(start + max_tokens, n)
        if end < n:
            end = snap(end, start)
        piece = text[spans[start][0]:spans[end - 1][1]].strip()
        if piece:
            chunks.append(piece)
        if end == n:
            return chunks
        start = snap(max(end - overlap, start + 1), start)


def chunk_documents(documents: list[dict], tokenizer: Tokenizer, max_tokens: int,
                    overlap: int = 0) -> tuple[list[dict], dict[str, list[str]]]:
    """Chunk every document longer than ``max_tokens``; return the new documents and parent id -> ids.

    A chunk's id is ``"<parent id>-c<i>"`` (stable as long as the parent and the chunking settings are)
    and it keeps ``parent_id`` and ``chunk`` (its position). A document that fits keeps its id and maps
    to itself. Questions whose gold document was chunked should count every chunk as gold, since the
    answer may sit in any of them (``import_corpus`` does exactly that).
    """
    out: list[dict] = []
    mapping: dict[str, list[str]] = {}
    for doc in documents:
        pieces = chunk_text(doc["text"], tokenizer, max_tokens, overlap)
        if len(pieces) == 1:
            out.append(doc)
            mapping[doc["id"]] = [doc["id"]]
            continue
        ids = []
        for i, piece in enumerate(pieces):
            chunk = {**doc, "id": f"{doc['id']}-c{i}", "text": piece, "parent_id": doc["id"], "chunk": i}
            out.append(chunk)
            ids.append(chunk["id"])
        mapping[doc["id"]] = ids
    return out, mapping


# ----------------------------------------------------------------------------- split

def split_questions(questions: list[dict], eval_fraction: float, seed: int,
                    num_eval: int | None = None) -> tuple[list[dict], list[dict]]:
    """A fixed, seeded train/eval split; both lists keep the input order.

    Questions are ranked by a hash of (seed, question id) and the first ``num_eval`` (default:
    round(eval_fraction * n), at least one when the fraction is positive) go to eval. Ranking by id
    rather than by position means reordering the input file does not move a question to the other side.
    """
    n = len(questions)
    if num_eval is None:
        if not 0 <= eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        num_eval = round(n * eval_fraction)
        if eval_fraction > 0 and num_eval == 0 and n > 1:
            num_eval = 1
    if num_eval < 0:
        raise ValueError(f"num_eval_questions must not be negative, got {num_eval}")
    ranked = sorted(range(n), key=lambda i: hashlib.sha1(f"{seed}:{questions[i]['id']}".encode("utf-8")).digest())
    held_out = set(ranked[:min(num_eval, n)])
    train = [q for i, q in enumerate(questions) if i not in held_out]
    evaluation = [q for i, q in enumerate(questions) if i in held_out]
    return train, evaluation


# ----------------------------------------------------------------------------- readers

def _decoded_lines(path: Path, bad_lines: set[int]) -> Iterator[str]:
    """Lines of a text file decoded one by one: a non-UTF-8 line is noted, not fatal to the others.

    Bad bytes become lone surrogates (surrogateescape) so a CSV parser can still find the row's end.
    """
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                bad_lines.add(line_no)
                yield raw.decode("utf-8", "surrogateescape")


def _utf8_error(raw: bytes) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"byte {raw[exc.start]:#04x} at column {exc.start + 1} is not UTF-8"
    return "not UTF-8"


class _Importer:
    """State of one import: the report, the documents and questions so far, and the stage-1 pairs."""

    def __init__(self, report: ImportReport, max_doc_chars: int | None, max_question_chars: int | None):
        self.report = report
        self.max_doc_chars = max_doc_chars
        self.max_question_chars = max_question_chars
        self.docs: dict[str, dict] = {}            # hashed id -> document, in first-seen order
        self.by_source_id: dict[str, str] = {}     # source's own document id -> hashed id
        self.questions: list[dict] = []
        self.question_ids: dict[str, dict] = {}
        self.stage1_pairs: list[dict] = []         # CLaRa stage-1 pairs, turned into records after the split

    # ---- files

    def _register(self, path: Path) -> None:
        if path.is_dir():
            raise IsADirectoryError(f"corpus import: {path} is a folder; give the corpus file(s) in it as "
                                    f"corpus.path (a list for several)")
        if not path.is_file():
            raise FileNotFoundError(f"corpus import: no such file {path}")
        self.report.files.append(str(path))

    def records(self, path: Path, kind: str) -> Iterator[tuple[Loc, dict]]:
        """JSON objects of a JSONL file or of a JSON-list file (told apart by the first character)."""
        self._register(path)
        with open(path, "rb") as fh:
            head = fh.read(4096).lstrip(_BOM).lstrip()
        if head.startswith(b"["):
            yield from self._json_list(path, kind)
        else:
            yield from self._jsonl(path, kind)

    def _jsonl(self, path: Path, kind: str) -> Iterator[tuple[Loc, dict]]:
        with open(path, "rb") as fh:  # binary, so one bad line does not stop the decoding of the rest
            for line_no, raw in enumerate(fh, start=1):
                if line_no == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM):]
                if not raw.strip():
                    continue
                loc = Loc(str(path), line_no)
                self.report.read[kind] += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.report.reject(loc, kind, "non_utf8", _utf8_error(raw))
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    self.report.reject(loc, kind, "malformed_json", f"{exc.msg} at column {exc.colno}")
                    continue
                if not isinstance(obj, dict):
                    self.report.reject(loc, kind, "not_an_object", f"expected a JSON object, got {type(obj).__name__}")
                    continue
                yield loc, obj

    def _json_list(self, path: Path, kind: str) -> Iterator[tuple[Loc, dict]]:
        """Elements of ``[...]`` one at a time, each with the line it starts on and its item number.

        Decoded with surrogateescape so a bad byte costs only the element that holds it. A syntax error
        ends the file (a JSON list cannot be resynchronised); elements before it are kept.
        """
        data = path.read_bytes()
        if data.startswith(_BOM):
            data = data[len(_BOM):]
        try:
            text, has_bad_bytes = data.decode("utf-8"), False
        except UnicodeDecodeError:
            # Strict UTF-8 never yields surrogates, so after surrogateescape every one marks a bad byte.
            text, has_bad_bytes = data.decode("utf-8", "surrogateescape"), True
        decoder = json.JSONDecoder()
        ws = re.compile(r"[ \t\n\r]*")
        cursor = {"pos": 0, "line": 1}

        def line_at(pos: int) -> int:  # incremental newline count: files can be hundreds of MB
            cursor["line"] += text.count("\n", cursor["pos"], pos)
            cursor["pos"] = pos
            return cursor["line"]

        i = ws.match(text, 0).end()
        if not text.startswith("[", i):
            self.report.read[kind] += 1
            self.report.reject(Loc(str(path), line_at(i)), kind, "malformed_json", "expected a JSON list")
            return
        i = ws.match(text, i + 1).end()
        item = 0
        if text.startswith("]", i):
            return
        while True:
            item += 1
            start_line = line_at(i)
            self.report.read[kind] += 1
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                self.report.reject(Loc(str(path), exc.lineno, item), kind, "malformed_json",
                                   f"{exc.msg} at column {exc.colno}; the rest of the file cannot be read")
                return
            bad = _SURROGATE.search(text, i, end) if has_bad_bytes else None
            line_at(end)
            if bad:
                bad_line = start_line + text.count("\n", i, bad.start())
                self.report.reject(Loc(str(path), bad_line, item), kind, "non_utf8",
                                   f"byte {ord(bad.group()) - 0xDC00:#04x} is not UTF-8")
            elif not isinstance(obj, dict):
                self.report.reject(Loc(str(path), start_line, item), kind, "not_an_object",
                                   f"expected a JSON object, got {type(obj).__name__}")
            else:
                yield Loc(str(path), start_line, item), obj
            i = ws.match(text, end).end()
            if text.startswith(",", i):
                i = ws.match(text, i + 1).end()
                continue
            if not text.startswith("]", i):
                self.report.read[kind] += 1
                self.report.reject(Loc(str(path), line_at(i), item + 1), kind, "malformed_json",
                                   "expected ',' or ']' after a list element; the rest of the file cannot be read")
            return

    def csv_rows(self, path: Path, kind: str, required: tuple[str, ...],
                 delimiter: str = ",") -> Iterator[tuple[Loc, dict]]:
        """Rows of a CSV/TSV file with a header, as dicts; ``line`` is the line the row starts on.

        The csv module (rather than pandas or datasets) because it gives each row's line number and lets
        a bad row or a non-UTF-8 line be reported on its own.
        """
        self._register(path)
        bad_lines: set[int] = set()
        old_limit = csv.field_size_limit()
        csv.field_size_limit(2**31 - 1)  # long fields are judged by max_doc_chars, not by csv's 128 KiB limit
        try:
            reader = csv.reader(_decoded_lines(path, bad_lines), delimiter=delimiter)
            header: list[str] | None = None
            previous_end = 0
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    self.report.read[kind] += 1
                    self.report.reject(Loc(str(path), previous_end + 1), kind, "malformed_row", str(exc))
                    if reader.line_num == previous_end:  # the parser is stuck: nothing more can be read
                        return
                    previous_end = reader.line_num
                    continue
                start, previous_end = previous_end + 1, reader.line_num
                if not row:
                    continue
                if header is None:
                    header = [h.strip() for h in row]
                    missing = [c for c in required if c not in header]
                    if missing:
                        # A missing column makes every row unusable: a configuration error, not a record error.
                        raise ValueError(f"{path}:{start}: header lacks required column(s) {', '.join(missing)} "
                                         f"(columns: {', '.join(header)})")
                    continue
                loc = Loc(str(path), start)
                self.report.read[kind] += 1
                bad = [n for n in range(start, previous_end + 1) if n in bad_lines]
                if bad:
                    self.report.reject(Loc(str(path), bad[0]), kind, "non_utf8",
                                       f"line {bad[0]} holds bytes that are not UTF-8")
                    continue
                if len(row) != len(header):
                    self.report.reject(loc, kind, "malformed_row",
                                       f"{len(row)} fields where the header has {len(header)}")
                    continue
                yield loc, dict(zip(header, row))
        finally:
            csv.field_size_limit(old_limit)

    def parquet_rows(self, path: Path, kind: str, required: tuple[str, ...]) -> Iterator[tuple[Loc, dict]]:
        """Rows of a Parquet file in batches (bounded memory); locations are 1-based row numbers."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._register(path)
        pf = pq.ParquetFile(path)
        missing = [c for c in required if c not in pf.schema_arrow.names]
        if missing:
            raise ValueError(f"{path}: lacks required column(s) {', '.join(missing)} "
                             f"(columns: {', '.join(pf.schema_arrow.names)})")
        row = 0
        for batch in pf.iter_batches(batch_size=4096):
            try:
                records, text_columns = batch.to_pylist(), []
            except UnicodeDecodeError:
                # Parquet does not promise valid UTF-8 in string columns and one bad value makes pyarrow
                # fail the whole batch: read the string columns as bytes and decode them row by row.
                text_columns = [f.name for f in batch.schema
                                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
                records = pa.Table.from_batches([batch]).cast(pa.schema([
                    pa.field(f.name, pa.large_binary()) if f.name in text_columns else f for f in batch.schema
                ])).to_pylist()
            for record in records:
                row += 1
                self.report.read[kind] += 1
                loc = Loc(str(path), row, row=row)
                try:
                    for name in text_columns:
                        if record[name] is not None:
                            try:
                                record[name] = record[name].decode("utf-8")
                            except UnicodeDecodeError as exc:
                                raise _Bad("non_utf8", f"column {name!r}: {_utf8_error(record[name])}") from exc
                except _Bad as bad:
                    self.report.reject(loc, kind, bad.reason, bad.message)
                    continue
                yield loc, record

    # ---- documents and questions

    def _check_doc_text(self, text: str) -> None:
        if not text:
            raise _Bad("empty_text", "document text is empty")
        if self.max_doc_chars and len(text) > self.max_doc_chars:
            raise _Bad("oversized", f"document text has {len(text):,} characters, more than "
                                    f"max_doc_chars={self.max_doc_chars:,}")

    def add_document(self, loc: Loc, title: str, text: str, source_id: str | None = None,
                     shared: bool = False) -> str | None:
        """Keep a document (or find it again); return its hashed id, None when rejected.

        ``shared``: the paragraph came inside a question record, where repeats are expected (merged);
        otherwise a repeat is a duplicate record and is rejected, its source id becoming an alias.
        """
        try:
            self._check_doc_text(text)
        except _Bad as bad:
            self.report.reject(loc, "documents", bad.reason, bad.message)
            return None
        new_id = doc_id(title, text)
        known = self.docs.get(new_id)
        if known is not None and (known["title"], known["text"]) != (title, text):
            raise RuntimeError(f"{loc.where}: document id collision between {known['source']} and this record")
        if source_id is not None and source_id in self.by_source_id:
            first = self.by_source_id[source_id]
            first_where = self.docs[first]["source"]
            if first != new_id:
                self.report.reject(loc, "documents", "duplicate_id",
                                   f"id {source_id!r} already used by a different document ({first_where})")
                return None
            self.report.reject(loc, "documents", "duplicate_content",
                               f"repeats id {source_id!r} and content of {first_where}")
            return new_id
        if known is not None:
            if source_id is not None:
                self.by_source_id[source_id] = new_id
            if shared:
                self.report.merged["documents"] += 1
            else:
                self.report.reject(loc, "documents", "duplicate_content",
                                   f"same title and text as {known['source']} ({new_id})")
            return new_id
        doc = {"id": new_id, "title": title, "text": text, "source": loc.source}
        if source_id is not None:
            doc["source_id"] = source_id
            self.by_source_id[source_id] = new_id
        self.docs[new_id] = doc
        self.report.kept["documents"] += 1
        return new_id

    def check_question(self, qid: str, question: str, answers: list[str], require_answer: bool = True) -> None:
        """Raise _Bad for an unusable question (run before anything of its record is kept)."""
        if not question:
            raise _Bad("empty_text", "question text is empty")
        if self.max_question_chars and len(question) > self.max_question_chars:
            raise _Bad("oversized", f"question has {len(question):,} characters, more than "
                                    f"max_question_chars={self.max_question_chars:,}")
        if require_answer and not answers:
            raise _Bad("no_answer", "no non-empty answer")
        if qid in self.question_ids:
            first = self.question_ids[qid]
            if (first["question"], first["answers"]) == (question, answers):
                raise _Bad("duplicate_content", f"repeats question {qid!r} of {first['source']}")
            raise _Bad("duplicate_id", f"question id {qid!r} already used by a different question ({first['source']})")

    def add_question(self, loc: Loc, qid: str, question: str, answers: list[str], gold: list[str],
                     qtype: str | None) -> dict:
        record = {"id": qid, "question": question, "answers": answers, "gold_doc_ids": list(dict.fromkeys(gold))}
        if qtype:
            record["type"] = qtype
        record["source"] = loc.source
        self.questions.append(record)
        self.question_ids[qid] = record
        self.report.kept["questions"] += 1
        return record

    def _context_question(self, loc: Loc, qid: str, question: str, answers: list[str], qtype: str | None,
                          paragraphs: list[tuple[str, str | _Bad]], gold_index: list[int],
                          gold_names: list[str]) -> None:
        """Keep a question whose record carries its own paragraphs (HotpotQA, 2Wiki, MuSiQue).

        ``paragraphs``: (title, text or the _Bad that rejected it). ``gold_index`` points into it,
        ``gold_names`` says how the source named each gold paragraph (for error messages). Nothing of
        the record is kept unless the question is valid and every gold paragraph is.
        """
        self.check_question(qid, question, answers)
        for index, name in zip(gold_index, gold_names):
            if index < 0:
                raise _Bad("unresolved_gold", f"supporting {name} is not among the record's paragraphs")
            if isinstance(paragraphs[index][1], _Bad):
                raise _Bad("unresolved_gold", f"supporting {name} was rejected: {paragraphs[index][1].message}")
        ids: list[str | None] = []
        for title, text in paragraphs:
            self.report.read["documents"] += 1
            if isinstance(text, _Bad):
                self.report.reject(loc, "documents", text.reason, f"paragraph {title!r}: {text.message}")
                ids.append(None)
            else:
                ids.append(self.add_document(loc, title, text, shared=True))
        gold = [ids[i] for i in gold_index]
        if any(g is None for g in gold):  # only when add_document rejected a gold paragraph in strict=False
            raise _Bad("unresolved_gold", "a supporting paragraph was rejected")
        self.add_question(loc, qid, question, answers, gold, qtype)

    def _paragraph_text(self, text_fn: Callable[[], str]) -> str | _Bad:
        try:
            text = text_fn()
            self._check_doc_text(text)
            return text
        except _Bad as bad:
            return bad

    # ---- formats

    def load_plain(self, paths: list[Path], fmt: str) -> None:
        """Text corpora: JSONL / Parquet / CSV records with ``text`` and optional ``id`` and ``title``."""
        for path in paths:
            if fmt == "parquet":
                rows = self.parquet_rows(path, "documents", ("text",))
            elif fmt == "csv":
                rows = self.csv_rows(path, "documents", ("text",))
            else:
                rows = self.records(path, "documents")
            self.add_document_rows(rows)

    def add_document_rows(self, rows, id_key: str = "id", id_required: bool = False) -> None:
        """Documents shaped ``{id?, title?, text}`` (plain corpora, MuSiQue's corpus, BEIR's corpus.jsonl);
        a bad row is rejected with its location and reason, the others are added."""
        for loc, obj in rows:
            try:
                text = _str_field(obj, "text")
                title = _str_field(obj, "title", required=False)
                source_id = _id_field(obj, id_key, required=id_required)
            except _Bad as bad:
                self.report.reject(loc, "documents", bad.reason, bad.message)
                continue
            self.add_document(loc, title, text, source_id)

    def load_context_qa(self, path: Path) -> None:
        """HotpotQA and 2WikiMultihopQA: ``context`` [[title, [sentences]]] and ``supporting_facts``
        [[title, sentence index]]; gold documents are the context paragraphs named by supporting facts.
        The Hugging Face layout (``{"title": [...], "sentences": [...]}``) is read too."""
        for loc, obj in self.records(path, "questions"):
            try:
                qid = _id_field(obj, "_id") if "_id" in obj or "id" not in obj else _id_field(obj, "id")
                question = _str_field(obj, "question")
                answers = _answers_field(obj, "answer")
                context = _pairs(obj, "context", "title", "sentences")
                paragraphs: list[tuple[str, str | _Bad]] = []
                for title, sentences in context:
                    if not isinstance(title, str):
                        raise _Bad("invalid_field", f"context title must be a string, got {type(title).__name__}")
                    if not isinstance(sentences, list):
                        raise _Bad("invalid_field", f"context of {title!r} must be a list of sentences")
                    text = self._paragraph_text(lambda s=sentences: _checked(_join_sentences(s)))
                    paragraphs.append((title.strip(), text))
                titles = [t for t, _ in paragraphs]
                facts = _pairs(obj, "supporting_facts", "title", "sent_id") if obj.get("supporting_facts") else []
                gold_titles = list(dict.fromkeys(str(t).strip() for t, _ in facts))
                gold_index = [titles.index(t) if t in titles else -1 for t in gold_titles]
                qtype = obj.get("type") if isinstance(obj.get("type"), str) else None
                self._context_question(loc, qid, question, answers, qtype, paragraphs, gold_index,
                                       [f"title {t!r}" for t in gold_titles])
            except _Bad as bad:
                self.report.reject(loc, "questions", bad.reason, bad.message)

    def load_musique(self, path: Path, corpus_path: Path | None, keep_unanswerable: bool) -> None:
        """MuSiQue questions (JSON list or JSONL) and optionally a corpus of ``{title, text}`` (HippoRAG).

        The corpus comes first, so its order is the document order; a question paragraph missing from
        it is added. Gold documents are the paragraphs with ``is_supporting``, matched by content since
        titles repeat (one Wikipedia article gives several paragraphs).
        """
        if corpus_path is not None:
            self.add_document_rows(self.records(corpus_path, "documents"))
        for loc, obj in self.records(path, "questions"):
            try:
                qid = _id_field(obj, "id")
                question = _str_field(obj, "question")
                answers = _answers_field(obj, "answer") + _answers_field(obj, "answer_aliases", required=False)
                answers = list(dict.fromkeys(answers))
                if obj.get("answerable", True) is False and not keep_unanswerable:
                    self.check_question(qid, question, answers, require_answer=False)
                    self.report.skip("questions", "unanswerable")
                    continue
                paragraphs: list[tuple[str, str | _Bad]] = []
                gold_index, gold_names = [], []
                for k, para in enumerate(_list_field(obj, "paragraphs")):
                    if not isinstance(para, dict):
                        raise _Bad("invalid_field", f"paragraph {k} must be an object")
                    title = _str_field(para, "title", required=False)
                    paragraphs.append((title, self._paragraph_text(lambda p=para: _str_field(p, "paragraph_text"))))
                    if para.get("is_supporting"):
                        gold_index.append(k)
                        gold_names.append(f"paragraph {para.get('idx', k)} ({title!r})")
                qtype = qid.split("__", 1)[0] if "__" in qid else "multi_hop"  # "2hop", "3hop1", ...
                self._context_question(loc, qid, question, answers, qtype, paragraphs, gold_index, gold_names)
            except _Bad as bad:
                self.report.reject(loc, "questions", bad.reason, bad.message)

    def load_flashrag(self, path: Path, corpus_path: Path | None) -> None:
        """FlashRAG: corpus JSONL ``{id, contents}`` ('"Title"\\ntext') and questions JSONL
        ``{id, question, golden_answers}``. Gold corpus ids, when a set has them, are read from
        ``gold_doc_ids`` (top level or in ``metadata``)."""
        if corpus_path is not None:
            for loc, obj in self.records(corpus_path, "documents"):
                try:
                    source_id = _id_field(obj, "id", required=False)
                    if "contents" in obj:
                        title, text = _split_contents(_str_field(obj, "contents"))
                    else:
                        title, text = _str_field(obj, "title", required=False), _str_field(obj, "text")
                except _Bad as bad:
                    self.report.reject(loc, "documents", bad.reason, bad.message)
                    continue
                self.add_document(loc, title, text, source_id)
        for loc, obj in self.records(path, "questions"):
            try:
                qid = _id_field(obj, "id")
                question = _str_field(obj, "question")
                answers = _answers_field(obj, "golden_answers")
                self.check_question(qid, question, answers)
                metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
                refs = obj.get("gold_doc_ids", metadata.get("gold_doc_ids")) or []
                if not isinstance(refs, list):
                    raise _Bad("invalid_field", "gold_doc_ids must be a list of corpus ids")
                gold = []
                for ref in refs:
                    if str(ref) not in self.by_source_id:
                        raise _Bad("unresolved_gold", f"gold corpus id {ref!r} is not in the corpus")
                    gold.append(self.by_source_id[str(ref)])
                qtype = obj.get("type", metadata.get("type"))
                self.add_question(loc, qid, question, answers, gold, qtype if isinstance(qtype, str) else None)
            except _Bad as bad:
                self.report.reject(loc, "questions", bad.reason, bad.message)

    def load_clara_stage1(self, path: Path) -> None:
        """CLaRa's stage-1 JSONL: ``{data_type: "qa", question: [..], answers: [..], docs: [..]}`` or
        ``{data_type: "paraphrase", answers: [paraphrase], docs: [doc]}``. Each line's passages become
        documents; each QA pair becomes a question (gold: the line's passages) and a stage-1 record;
        a paraphrase becomes a stage-1 record only. A passage repeated on another line is merged.
        """
        for loc, obj in self.records(path, "documents"):
            try:
                data_type = _str_field(obj, "data_type", required=False) or "qa"
                if data_type not in ("qa", "paraphrase"):
                    raise _Bad("invalid_field", f"data_type must be 'qa' or 'paraphrase', got {data_type!r}")
                docs = _list_field(obj, "docs")
                if not docs:
                    raise _Bad("empty_text", "docs is empty")
                texts = []
                for k, d in enumerate(docs):
                    texts.append(_str_field({"docs[%d]" % k: d}, "docs[%d]" % k))
                    self._check_doc_text(texts[-1])
                answers_raw = obj.get("answers")
                answers_raw = [answers_raw] if isinstance(answers_raw, str) else answers_raw
                if not isinstance(answers_raw, list):
                    raise _Bad("missing_field" if answers_raw is None else "invalid_field",
                               "field 'answers' must be a list of strings")
                if data_type == "qa":
                    questions = obj.get("question")
                    questions = [questions] if isinstance(questions, str) else questions
                    if not isinstance(questions, list):
                        raise _Bad("missing_field" if questions is None else "invalid_field",
                                   "field 'question' must be a list of strings")
                    if len(questions) != len(answers_raw):
                        raise _Bad("invalid_field", f"{len(questions)} questions but {len(answers_raw)} answers")
            except _Bad as bad:
                self.report.reject(loc, "documents", bad.reason, bad.message)
                continue
            self.report.read["documents"] += len(texts) - 1  # the reader counted the line as one
            ids = [self.add_document(loc, "", text, shared=True) for text in texts]
            if data_type == "paraphrase":
                for k, answer in enumerate(answers_raw):
                    self.report.read["paraphrases"] += 1
                    try:
                        paraphrase = _str_field({"answers": answer}, "answers")
                        if not paraphrase:
                            raise _Bad("empty_text", "paraphrase is empty")
                    except _Bad as bad:
                        self.report.reject(loc, "paraphrases", bad.reason,
                                           f"paraphrase {k + 1} of {len(answers_raw)}: {bad.message}")
                        continue
                    self.report.kept["paraphrases"] += 1
                    self.stage1_pairs.append({"qid": None, "doc_ids": ids, "data_type": "paraphrase",
                                              "question": "", "answer": paraphrase})
                continue
            for k, (q, a) in enumerate(zip(questions, answers_raw)):
                self.report.read["questions"] += 1
                try:
                    question = _str_field({"question": q}, "question")
                    answers = _answers_field({"answers": a}, "answers")
                    qid = "q-" + _hash16(ids[0], question, "\n".join(answers))
                    self.check_question(qid, question, answers)
                except _Bad as bad:
                    self.report.reject(loc, "questions", bad.reason, f"pair {k + 1} of {len(questions)}: {bad.message}")
                    continue
                self.add_question(loc, qid, question, answers, ids, "single_hop")
                self.stage1_pairs.append({"qid": qid, "doc_ids": ids, "data_type": "qa",
                                          "question": question, "answer": answers[0]})

    def load_beir(self, folder: Path, split: str) -> None:
        """BEIR: corpus.jsonl ``{_id, title, text}``, queries.jsonl ``{_id, text}``, qrels/<split>.tsv.

        A query becomes a question when the split judges at least one document relevant (score > 0);
        those documents are its gold. BEIR has no answers, so ``answers`` is empty.
        """
        self.add_document_rows(self.records(folder / "corpus.jsonl", "documents"), id_key="_id", id_required=True)
        queries: dict[str, tuple[Loc, str]] = {}
        for loc, obj in self.records(folder / "queries.jsonl", "questions"):
            try:
                qid = _id_field(obj, "_id")
                text = _str_field(obj, "text")
                self.check_question(qid, text, [], require_answer=False)
                if qid in queries:
                    first_loc, first_text = queries[qid]
                    reason = "duplicate_content" if first_text == text else "duplicate_id"
                    raise _Bad(reason, f"query id {qid!r} already read at {first_loc.where}")
            except _Bad as bad:
                self.report.reject(loc, "questions", bad.reason, bad.message)
                continue
            queries[qid] = (loc, text)
        gold: dict[str, list[str]] = {}
        not_relevant = 0
        for loc, row in self.csv_rows(folder / "qrels" / f"{split}.tsv", "qrels",
                                      ("query-id", "corpus-id", "score"), delimiter="\t"):
            try:
                qid, cid = row["query-id"].strip(), row["corpus-id"].strip()
                try:
                    score = int(float(row["score"]))
                except ValueError:
                    raise _Bad("invalid_field", f"score {row['score']!r} is not a number") from None
                if qid not in queries:
                    raise _Bad("unresolved_gold", f"query id {qid!r} is not in queries.jsonl")
                if cid not in self.by_source_id:
                    raise _Bad("unresolved_gold", f"corpus id {cid!r} is not in corpus.jsonl")
            except _Bad as bad:
                self.report.reject(loc, "qrels", bad.reason, bad.message)
                continue
            self.report.kept["qrels"] += 1
            if score > 0:
                gold.setdefault(qid, []).append(self.by_source_id[cid])
            else:
                not_relevant += 1
        self.report.extra["beir"] = {"split": split, "qrels_not_relevant": not_relevant}
        for qid, (loc, text) in queries.items():
            if qid in gold:
                self.add_question(loc, qid, text, [], gold[qid], None)
            else:
                self.report.skip("questions", f"no_relevant_qrels_in_{split}")

    # ---- stage-1 records

    def stage1_records(self, documents: dict[str, dict], chunks: dict[str, list[str]],
                       eval_ids: set[str]) -> tuple[list[dict], dict]:
        """One record per kept QA pair whose question is in train (eval pairs are held out: training must
        never see them), and one per paraphrase. With chunking, a QA record uses the first chunk that
        contains the answer (else the first chunk); a paraphrase of a chunked passage has no single
        chunk to describe and is skipped (counted)."""
        records, seen = [], set()
        stats = Counter()
        for pair in self.stage1_pairs:
            if pair["qid"] in eval_ids:
                stats["held_out_for_eval"] += 1
                continue
            candidates = [c for pid in pair["doc_ids"] for c in chunks.get(pid, [pid])]
            if pair["data_type"] == "paraphrase":
                if len(chunks.get(pair["doc_ids"][0], [pair["doc_ids"][0]])) > 1:
                    stats["paraphrases_skipped_chunked"] += 1
                    continue
                chosen = pair["doc_ids"][0]
                record_id = "scp-para-" + _hash16(chosen, pair["answer"])
            else:
                answer = pair["answer"].casefold()
                chosen = next((c for c in candidates if answer in documents[c]["text"].casefold()), None)
                if chosen is None:
                    stats["answer_not_in_doc"] += 1
                    chosen = candidates[0]
                record_id = f"scp-{pair['qid']}"
            if record_id in seen:
                stats["duplicate_paraphrases"] += 1
                continue
            seen.add(record_id)
            doc = documents[chosen]
            records.append({"id": record_id, "doc_id": chosen, "doc": doc["text"], "title": doc.get("title", ""),
                            "data_type": pair["data_type"], "question": pair["question"], "answer": pair["answer"]})
            stats[pair["data_type"]] += 1
        return records, {"records": len(records), "qa": stats["qa"], "paraphrase": stats["paraphrase"],
                         **{k: v for k, v in sorted(stats.items()) if k not in ("qa", "paraphrase")}}


def _checked(text: str) -> str:
    _check_unicode(text, "context")
    return text


def _pairs(obj: dict, key: str, first: str, second: str) -> list[tuple[Any, Any]]:
    """[[a, b], ...] pairs, or the Hugging Face column layout {first: [a, ...], second: [b, ...]}."""
    value = obj.get(key)
    if value is None:
        raise _Bad("missing_field", f"missing field {key!r}")
    if isinstance(value, dict) and isinstance(value.get(first), list) and isinstance(value.get(second), list):
        return list(zip(value[first], value[second]))
    if not isinstance(value, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        raise _Bad("invalid_field", f"field {key!r} must be a list of [{first}, {second}] pairs")
    return [tuple(p) for p in value]


def _split_contents(contents: str) -> tuple[str, str]:
    """FlashRAG ``contents``: '"Title"\\ntext' -> (Title, text); anything else is all text."""
    head, sep, rest = contents.partition("\n")
    head = head.strip()
    if sep and len(head) >= 2 and head.startswith('"') and head.endswith('"'):
        return head[1:-1].strip(), rest.strip()
    return "", contents


# ----------------------------------------------------------------------------- entry point

def _paths(spec: dict, key: str, root: Path, required: bool = True) -> list[Path]:
    value = spec.get(key)
    if key == "path" and value is None:
        value = spec.get("paths")
    if value in (None, "", []):
        if required:
            raise ValueError(f"corpus source {spec['source']!r} needs '{key}' in its spec")
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [p if p.is_absolute() else root / p for p in (Path(str(v)).expanduser() for v in values)]


def _one(paths: list[Path], key: str, source: str) -> Path:
    if len(paths) != 1:
        raise ValueError(f"corpus source {source!r} takes one '{key}', got {len(paths)}")
    return paths[0]


def import_corpus(spec: dict, *, root: str | os.PathLike | None = None, seed: int | None = None,
                  tokenizer: Tokenizer = None, strict: bool | None = None) -> ImportResult:
    """Import a corpus described by a params.yaml ``corpus:`` section.

    spec keys: ``source`` (one of SOURCES); ``path`` (a file, a list of files for jsonl/parquet/csv, the
    folder for beir); ``corpus_path`` (musique, flashrag); ``split`` (beir qrels, default "test");
    ``max_doc_chars``, ``max_question_chars`` (null disables); ``doc_max_tokens``, ``overlap`` and
    ``tokenizer`` ("whitespace" default, or a model reference such as "embedded-minilm") for chunking;
    ``eval_fraction`` (default 0.1) or ``num_eval_questions``; ``seed`` (default: the ``seed`` argument,
    else 0); ``strict``; ``keep_unanswerable`` (musique). Relative paths are read from ``root`` (default:
    the working directory). ``tokenizer`` given here wins over the spec's.
    """
    spec = dict(spec)
    source = spec.get("source")
    if source not in SOURCES:
        raise ValueError(f"corpus source {source!r} is not importable; choose one of {', '.join(SOURCES)}")
    root_path = Path(root) if root is not None else Path.cwd()
    strict = bool(spec.get("strict", False)) if strict is None else strict
    seed = int(spec.get("seed", seed if seed is not None else 0))
    report = ImportReport(source, strict)
    ignored = sorted(k for k in spec if k not in _SPEC_KEYS and k not in _EMBEDDED_KEYS)
    if ignored:
        report.extra["ignored_spec_keys"] = ignored  # likely typos: shown, not fatal
    max_doc_chars = spec.get("max_doc_chars",
                             DEFAULT_MAX_DOC_CHARS_CHUNKED if spec.get("doc_max_tokens") else DEFAULT_MAX_DOC_CHARS)
    max_question_chars = spec.get("max_question_chars", DEFAULT_MAX_QUESTION_CHARS)
    imp = _Importer(report, int(max_doc_chars) if max_doc_chars else None,
                    int(max_question_chars) if max_question_chars else None)

    paths = _paths(spec, "path", root_path)
    corpus = _paths(spec, "corpus_path", root_path, required=False)
    if source in ("jsonl", "parquet", "csv"):
        imp.load_plain(paths, source)
    elif source in ("hotpotqa", "2wiki"):
        imp.load_context_qa(_one(paths, "path", source))
    elif source == "musique":
        imp.load_musique(_one(paths, "path", source), _one(corpus, "corpus_path", source) if corpus else None,
                         bool(spec.get("keep_unanswerable", False)))
    elif source == "flashrag":
        imp.load_flashrag(_one(paths, "path", source), _one(corpus, "corpus_path", source) if corpus else None)
    elif source == "clara_stage1":
        imp.load_clara_stage1(_one(paths, "path", source))
    else:
        folder = _one(paths, "path", source)
        if not folder.is_dir():
            raise FileNotFoundError(f"corpus import: BEIR folder {folder} does not exist")
        imp.load_beir(folder, str(spec.get("split", "test")))

    documents = list(imp.docs.values())
    if not documents:  # an empty or wholly rejected file would otherwise fail a stage later, far from its cause
        why = ", ".join(f"{n} rejected as {r}" for r, n in sorted(report.rejected_by_reason.items()))
        first = f"; first: {report.errors[0].where}: {report.errors[0].message}" if report.errors else ""
        raise ValueError(f"corpus import: {', '.join(report.files) or 'the corpus'} gave no documents"
                         f"{' (' + why + ')' if why else ' (the file is empty)'}{first}; "
                         f"check corpus.path and the format in docs/data.md")
    questions = imp.questions
    chunks: dict[str, list[str]] = {d["id"]: [d["id"]] for d in documents}
    report.extra["chunking"] = None
    if spec.get("doc_max_tokens"):
        max_tokens, overlap = int(spec["doc_max_tokens"]), int(spec.get("overlap", 0))
        tok = tokenizer if tokenizer is not None else load_tokenizer(spec.get("tokenizer"))
        documents, chunks = chunk_documents(documents, tok, max_tokens, overlap)
        # Gold documents that were chunked: every chunk is gold, the answer may be in any of them.
        questions = [{**q, "gold_doc_ids": [c for g in q["gold_doc_ids"] for c in chunks[g]]} for q in questions]
        report.extra["chunking"] = {
            "max_tokens": max_tokens, "overlap": overlap, "tokenizer": spec.get("tokenizer") or "whitespace",
            "documents_chunked": sum(1 for ids in chunks.values() if len(ids) > 1),
            "chunks_from_chunked_documents": sum(len(ids) for ids in chunks.values() if len(ids) > 1),
        }

    num_eval = spec.get("num_eval_questions")
    eval_fraction = float(spec.get("eval_fraction", DEFAULT_EVAL_FRACTION))
    train, evaluation = split_questions(questions, eval_fraction, seed, int(num_eval) if num_eval is not None else None)
    report.extra["split"] = {"seed": seed, "eval_fraction": eval_fraction, "num_eval_questions": num_eval,
                             "train": len(train), "eval": len(evaluation)}

    stage1: list[dict] = []
    report.extra["stage1"] = None
    if source == "clara_stage1":
        stage1, report.extra["stage1"] = imp.stage1_records({d["id"]: d for d in documents}, chunks,
                                                            {q["id"] for q in evaluation})
    report.extra["output"] = {"documents": len(documents), "questions_train": len(train),
                              "questions_eval": len(evaluation), "stage1": len(stage1)}
    return ImportResult(documents, train, evaluation, stage1, report.as_dict())


# ----------------------------------------------------------------------------- writing

def import_stats(result: ImportResult) -> dict:
    """stats.json of an imported corpus, laid out like ``corpus.corpus_stats``."""
    docs = result.documents
    words = [len(d["text"].split()) for d in docs]
    stats = {
        "source": result.report["source"],
        "documents": {"total": len(docs), "chunks": sum(1 for d in docs if "parent_id" in d)},
        "document_words": {"min": min(words, default=0), "max": max(words, default=0),
                           "mean": round(sum(words) / len(words), 2) if words else 0.0},
        "questions": {},
        "stage1": {"total": len(result.stage1),
                   **dict(sorted(Counter(r["data_type"] for r in result.stage1).items()))},
        "rejected": sum(c["rejected"] for c in result.report["counts"].values()),
    }
    for split in ("train", "eval"):
        qs = getattr(result, f"questions_{split}")
        stats["questions"][split] = {"total": len(qs),
                                     **dict(sorted(Counter(q.get("type", "untyped") for q in qs).items()))}
    return stats


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_import(out_dir: str | os.PathLike, result: ImportResult) -> dict:
    """Write the raw_corpus layout (documents.jsonl, questions_train.jsonl, questions_eval.jsonl,
    stats.json) plus stage1.jsonl (empty unless the source is clara_stage1), import_report.json
    (errors capped at MAX_ERRORS_IN_REPORT_FILE) and rejected.jsonl (every error). Returns the stats."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "documents.jsonl", result.documents)
    write_jsonl(out / "questions_train.jsonl", result.questions_train)
    write_jsonl(out / "questions_eval.jsonl", result.questions_eval)
    write_jsonl(out / "stage1.jsonl", result.stage1)
    write_jsonl(out / "rejected.jsonl", result.errors)
    report = {**result.report, "errors": result.errors[:MAX_ERRORS_IN_REPORT_FILE],
              "errors_total": len(result.errors),
              "errors_truncated": len(result.errors) > MAX_ERRORS_IN_REPORT_FILE}
    _write_json(out / "import_report.json", report)
    stats = import_stats(result)
    _write_json(out / "stats.json", stats)
    return stats
