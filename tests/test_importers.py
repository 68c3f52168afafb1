"""Corpus importers: every format from small fixtures, every kind of bad input, dedup, chunking, ids,
the seeded split, the written layout, and the real data in ../shared/data when it is there."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from clara_pipeline.importers import (
    REASONS,
    chunk_documents,
    chunk_text,
    doc_id,
    import_corpus,
    load_tokenizer,
    split_questions,
    write_import,
)
from clara_pipeline.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


# ----------------------------------------------------------------------------- helpers

def write_lines(path: Path, lines: list) -> Path:
    """One JSON object (or a raw str / bytes line, written as is) per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = b""
    for line in lines:
        if isinstance(line, bytes):
            out += line + b"\n"
        elif isinstance(line, str):
            out += line.encode("utf-8") + b"\n"
        else:
            out += json.dumps(line).encode("utf-8") + b"\n"
    path.write_bytes(out)
    return path


def write_json(path: Path, obj, indent: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent), encoding="utf-8")
    return path


def only_error(result, reason: str) -> dict:
    errors = [e for e in result.errors if e["reason"] == reason]
    assert len(errors) == 1, result.errors
    return errors[0]


def assert_balanced(result) -> None:
    """Nothing disappears: every record read is kept, merged, skipped or rejected (and rejections are listed)."""
    counts = result.report["counts"]
    for kind, c in counts.items():
        assert c["read"] == c["kept"] + c["merged"] + c["skipped"] + c["rejected"], (kind, c)
    assert sum(c["rejected"] for c in counts.values()) == len(result.errors)
    assert sum(result.report["rejected_by_reason"].values()) == len(result.errors)
    assert all(e["reason"] in REASONS for e in result.errors)


PLAIN = [
    {"id": "a", "title": "Alpha", "text": "Alpha is the first letter."},
    {"id": "b", "title": "Beta", "text": "Beta comes second."},
    {"text": "An untitled passage without an id."},
]


# ----------------------------------------------------------------------------- plain corpora

def test_plain_jsonl(tmp_path):
    path = write_lines(tmp_path / "docs.jsonl", PLAIN)
    result = import_corpus({"source": "jsonl", "path": str(path)})
    assert result.documents == [
        {"id": doc_id("Alpha", "Alpha is the first letter."), "title": "Alpha", "text": "Alpha is the first letter.",
         "source": "docs.jsonl:1", "source_id": "a"},
        {"id": doc_id("Beta", "Beta comes second."), "title": "Beta", "text": "Beta comes second.",
         "source": "docs.jsonl:2", "source_id": "b"},
        {"id": doc_id("", "An untitled passage without an id."), "title": "",
         "text": "An untitled passage without an id.", "source": "docs.jsonl:3"},
    ]
    assert result.report["counts"]["documents"] == {"read": 3, "kept": 3, "merged": 0, "skipped": 0, "rejected": 0}
    assert result.questions_train == result.questions_eval == result.stage1 == []
    assert result.errors == []


def test_plain_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    texts = pa.array([b"Alpha is the first letter.", b"bad \xff byte", b"", b"Gamma is third."]).view(pa.string())
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "title": ["Alpha", "Bad", "Empty", "Gamma"], "text": texts}), path)
    result = import_corpus({"source": "parquet", "path": str(path)})
    assert [d["title"] for d in result.documents] == ["Alpha", "Gamma"]
    assert [d["source_id"] for d in result.documents] == ["1", "4"]  # integer ids become strings
    assert result.documents[1]["source"] == "docs.parquet:row 4"
    bad = only_error(result, "non_utf8")
    assert (bad["file"], bad["row"], bad["where"]) == (str(path), 2, f"{path}:row 2")
    assert "0xff" in bad["message"]
    assert only_error(result, "empty_text")["row"] == 3
    assert result.report["counts"]["documents"]["read"] == 4
    assert_balanced(result)


def test_plain_csv_with_multiline_field_and_bad_bytes(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_bytes(b'id,title,text\n'
                     b'a,Alpha,"Alpha spans\ntwo lines."\n'   # lines 2-3
                     b'b,Beta,Beta \xfe is not UTF-8.\n'       # line 4
                     b'c,Gamma,too,many\n'                     # line 5
                     b'\n'
                     b'd,Delta,Delta is fine.\n')              # line 7
    result = import_corpus({"source": "csv", "path": str(path)})
    assert [(d["title"], d["text"], d["source"]) for d in result.documents] == [
        ("Alpha", "Alpha spans\ntwo lines.", "docs.csv:2"), ("Delta", "Delta is fine.", "docs.csv:7")]
    assert only_error(result, "non_utf8")["line"] == 4
    assert only_error(result, "malformed_row")["line"] == 5
    assert result.report["counts"]["documents"] == {"read": 4, "kept": 2, "merged": 0, "skipped": 0, "rejected": 2}
    assert_balanced(result)


def test_csv_without_text_column_is_a_configuration_error(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("id,body\na,hello\n")
    with pytest.raises(ValueError, match=r"docs.csv:1: header lacks required column\(s\) text"):
        import_corpus({"source": "csv", "path": str(path)})


# ----------------------------------------------------------------------------- QA formats

def hotpot_item(qid, question, answer, context, facts, qtype="bridge"):
    return {"_id": qid, "question": question, "answer": answer, "type": qtype, "level": "easy",
            "supporting_facts": facts, "context": context}


def test_hotpotqa(tmp_path):
    paris = ["Paris", ["Paris is the capital of France.", " It lies on the Seine."]]
    seine = ["Seine", ["The Seine is a river.", " It flows into the Channel."]]
    rome = ["Rome", ["Rome is in Italy."]]
    items = [
        hotpot_item("q1", "Which river flows through the capital of France?", "Seine", [paris, seine, rome],
                    [["Paris", 0], ["Seine", 0], ["Paris", 1]]),
        hotpot_item("q2", "Is Rome or Paris in Italy?", "Rome", [rome, paris], [["Rome", 0], ["Paris", 0]],
                    qtype="comparison"),
        hotpot_item("q3", "Where is Atlantis?", "nowhere", [rome], [["Atlantis", 0]]),
    ]
    path = write_json(tmp_path / "hotpot.json", items)  # one line, like the official files
    result = import_corpus({"source": "hotpotqa", "path": str(path), "eval_fraction": 0})
    ids = {d["title"]: d["id"] for d in result.documents}
    assert [d["text"] for d in result.documents] == [
        "Paris is the capital of France. It lies on the Seine.",
        "The Seine is a river. It flows into the Channel.", "Rome is in Italy."]
    assert result.questions_train == [
        {"id": "q1", "question": "Which river flows through the capital of France?", "answers": ["Seine"],
         "gold_doc_ids": [ids["Paris"], ids["Seine"]], "type": "bridge", "source": "hotpot.json:1 (item 1)"},
        {"id": "q2", "question": "Is Rome or Paris in Italy?", "answers": ["Rome"],
         "gold_doc_ids": [ids["Rome"], ids["Paris"]], "type": "comparison", "source": "hotpot.json:1 (item 2)"},
    ]
    error = only_error(result, "unresolved_gold")
    assert (error["line"], error["item"], error["kind"]) == (1, 3, "questions")
    assert "'Atlantis'" in error["message"] and error["where"] == f"{path}:1 (item 3)"
    # q2's two paragraphs were already documents: merged, not duplicates. q3 kept nothing.
    assert result.report["counts"]["documents"] == {"read": 5, "kept": 3, "merged": 2, "skipped": 0, "rejected": 0}
    assert_balanced(result)


def test_hotpotqa_hugging_face_layout(tmp_path):
    item = {"id": "h1", "question": "Who wrote Hamlet?", "answer": "Shakespeare", "type": "bridge",
            "supporting_facts": {"title": ["Hamlet"], "sent_id": [0]},
            "context": {"title": ["Hamlet", "Macbeth"],
                        "sentences": [["Hamlet is a play by Shakespeare."], ["Macbeth is a tragedy."]]}}
    result = import_corpus({"source": "hotpotqa", "path": str(write_lines(tmp_path / "h.jsonl", [item])),
                            "eval_fraction": 0})
    assert result.questions_train[0]["gold_doc_ids"] == [doc_id("Hamlet", "Hamlet is a play by Shakespeare.")]
    assert len(result.documents) == 2


def test_2wiki_joins_sentences_and_resolves_titles(tmp_path):
    items = [{"_id": "w1", "question": "Who directed Move?", "answer": "Stuart Rosenberg", "type": "compositional",
              "supporting_facts": [["Move (1970 film)", 0]],
              "context": [["Move (1970 film)", ["Move is a 1970 American comedy film.", "It was directed by Stuart Rosenberg."]],
                          ["Other", ["Unrelated text."]]],
              "evidences": [["Move (1970 film)", "director", "Stuart Rosenberg"]]}]
    result = import_corpus({"source": "2wiki", "path": str(write_json(tmp_path / "dev.json", items, indent=2)),
                            "eval_fraction": 0})
    assert result.documents[0]["text"] == "Move is a 1970 American comedy film. It was directed by Stuart Rosenberg."
    assert result.questions_train[0]["gold_doc_ids"] == [result.documents[0]["id"]]
    assert result.questions_train[0]["type"] == "compositional"
    assert result.questions_train[0]["source"] == "dev.json:2 (item 1)"  # indented list: item starts on line 2


def musique_item(qid, question, answer, paragraphs, aliases=(), answerable=True):
    return {"id": qid, "question": question, "answer": answer, "answer_aliases": list(aliases),
            "answerable": answerable, "question_decomposition": [],
            "paragraphs": [{"idx": i, "title": t, "paragraph_text": x, "is_supporting": s}
                           for i, (t, x, s) in enumerate(paragraphs)]}


def test_musique_with_and_without_corpus(tmp_path):
    a = ("Lyon", "Lyon is a city in France.", True)
    b = ("Lyon", "Lyon hosts a silk museum.", False)       # same title, other paragraph: titles are not ids
    c = ("Rhone", "The Rhone flows through Lyon.", True)
    items = [musique_item("2hop__1_2", "Which river flows through the French city with a silk museum?", "Rhone",
                          [a, b, c], aliases=["Rhône", "Rhone"]),
             musique_item("2hop__3_4", "Unanswerable?", "x", [a, c], answerable=False)]
    questions = write_lines(tmp_path / "musique.jsonl", items)
    corpus = write_json(tmp_path / "corpus.json", [{"title": "Lyon", "text": a[1]}, {"title": "Lyon", "text": b[1]}])

    with_corpus = import_corpus({"source": "musique", "path": str(questions), "corpus_path": str(corpus),
                                 "eval_fraction": 0})
    assert [d["text"] for d in with_corpus.documents] == [a[1], b[1], c[1]]  # corpus order, then the missing one
    assert with_corpus.documents[2]["source"] == "musique.jsonl:1"
    q = with_corpus.questions_train[0]
    assert q["answers"] == ["Rhone", "Rhône"] and q["type"] == "2hop"
    assert q["gold_doc_ids"] == [doc_id("Lyon", a[1]), doc_id("Rhone", c[1])]
    assert with_corpus.report["counts"]["documents"] == {"read": 5, "kept": 3, "merged": 2, "skipped": 0, "rejected": 0}
    assert with_corpus.report["counts"]["questions"] == {"read": 2, "kept": 1, "merged": 0, "skipped": 1, "rejected": 0}
    assert with_corpus.report["skipped_by_reason"] == {"unanswerable": 1}
    assert_balanced(with_corpus)

    alone = import_corpus({"source": "musique", "path": str(questions), "eval_fraction": 0, "keep_unanswerable": True})
    assert {d["id"] for d in alone.documents} == {d["id"] for d in with_corpus.documents}
    assert [q["id"] for q in alone.questions_train] == ["2hop__1_2", "2hop__3_4"]


def test_flashrag(tmp_path):
    corpus = write_lines(tmp_path / "corpus.jsonl", [
        {"id": "0", "contents": '"Paris"\nParis is the capital of France.'},
        {"id": "1", "contents": "No title line here."},
        {"id": "2", "contents": '"Paris"\nParis is the capital of France.'},   # same content, other id
    ])
    questions = write_lines(tmp_path / "test.jsonl", [
        {"id": "test_0", "question": "What is the capital of France?", "golden_answers": ["Paris", "paris"]},
        {"id": "test_1", "question": "Capital?", "golden_answers": ["Paris"], "metadata": {"gold_doc_ids": ["2"]}},
        {"id": "test_2", "question": "Lost?", "golden_answers": ["x"], "gold_doc_ids": ["99"]},
    ])
    result = import_corpus({"source": "flashrag", "path": str(questions), "corpus_path": str(corpus),
                            "eval_fraction": 0})
    paris = doc_id("Paris", "Paris is the capital of France.")
    assert [(d["id"], d["title"], d["text"]) for d in result.documents] == [
        (paris, "Paris", "Paris is the capital of France."), (doc_id("", "No title line here."), "", "No title line here.")]
    assert [q["answers"] for q in result.questions_train] == [["Paris", "paris"], ["Paris"]]
    assert result.questions_train[0]["gold_doc_ids"] == []
    assert result.questions_train[1]["gold_doc_ids"] == [paris]  # id "2" was a duplicate of "0": still resolves
    dup = only_error(result, "duplicate_content")
    assert (dup["line"], dup["kind"]) == (3, "documents") and "corpus.jsonl:1" in dup["message"]
    lost = only_error(result, "unresolved_gold")
    assert (lost["file"], lost["line"]) == (str(questions), 3) and "'99'" in lost["message"]
    assert_balanced(result)


def test_clara_stage1(tmp_path):
    doc1 = "This a document about Lyon. Lyon is a city in France on the Rhone."
    doc2 = "This a document about Oslo. Oslo is the capital of Norway."
    path = write_lines(tmp_path / "pretrain.jsonl", [
        {"data_type": "qa", "question": ["Where is Lyon?", "Which river?", ""], "answers": ["France", "Rhone", "x"],
         "docs": [doc1]},
        {"data_type": "paraphrase", "question": "", "answers": ["Lyon, on the Rhone, is French."], "docs": [doc1]},
        {"data_type": "qa", "question": ["Capital of Norway?"], "answers": ["Oslo"], "docs": [doc2]},
        {"data_type": "qa", "question": ["One?", "Two?"], "answers": ["1"], "docs": [doc2]},
    ])
    result = import_corpus({"source": "clara_stage1", "path": str(path), "num_eval_questions": 1, "seed": 3})
    ids = [doc_id("", doc1), doc_id("", doc2)]
    assert [d["id"] for d in result.documents] == ids
    questions = result.questions_train + result.questions_eval
    assert sorted(q["question"] for q in questions) == ["Capital of Norway?", "Where is Lyon?", "Which river?"]
    assert all(q["type"] == "single_hop" and len(q["gold_doc_ids"]) == 1 for q in questions)
    assert len(result.questions_eval) == 1
    held_out = result.questions_eval[0]
    # Stage-1 records: the schema of synthesis.build_stage1_records, eval pairs held out, paraphrase kept.
    assert all(set(r) == {"id", "doc_id", "doc", "title", "data_type", "question", "answer"} for r in result.stage1)
    qa = [r for r in result.stage1 if r["data_type"] == "qa"]
    assert sorted(r["question"] for r in qa) == sorted(q["question"] for q in result.questions_train)
    assert held_out["question"] not in {r["question"] for r in result.stage1}
    para = [r for r in result.stage1 if r["data_type"] == "paraphrase"]
    assert para == [{"id": para[0]["id"], "doc_id": ids[0], "doc": doc1, "title": "", "data_type": "paraphrase",
                     "question": "", "answer": "Lyon, on the Rhone, is French."}]
    for r in qa:
        q = next(q for q in questions if q["question"] == r["question"])
        assert (r["id"], r["doc_id"], r["answer"]) == (f"scp-{q['id']}", q["gold_doc_ids"][0], q["answers"][0])
    assert result.report["stage1"]["held_out_for_eval"] == 1
    empty = only_error(result, "empty_text")
    assert (empty["line"], empty["kind"]) == (1, "questions") and "pair 3 of 3" in empty["message"]
    mismatch = only_error(result, "invalid_field")
    assert (mismatch["line"], mismatch["kind"]) == (4, "documents") and "2 questions but 1 answers" in mismatch["message"]
    assert result.report["counts"]["documents"] == {"read": 4, "kept": 2, "merged": 1, "skipped": 0, "rejected": 1}
    assert result.report["counts"]["paraphrases"] == {"read": 1, "kept": 1, "merged": 0, "skipped": 0, "rejected": 0}
    assert_balanced(result)


def test_beir(tmp_path):
    folder = tmp_path / "scifact"
    write_lines(folder / "corpus.jsonl", [
        {"_id": "d1", "title": "Cells", "text": "Cells divide.", "metadata": {}},
        {"_id": "d2", "title": "Atoms", "text": "Atoms bond."},
        {"_id": "d3", "title": "Stars", "text": "Stars burn."},
    ])
    write_lines(folder / "queries.jsonl", [
        {"_id": "1", "text": "Do cells divide?"}, {"_id": "2", "text": "Do atoms bond?"},
        {"_id": "3", "text": "Only in the train split."}])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t1\n2\td3\t0\n2\td9\t1\n1\td3\t2\n")
    result = import_corpus({"source": "beir", "path": str(folder), "split": "test", "eval_fraction": 0})
    ids = {d["source_id"]: d["id"] for d in result.documents}
    assert [(q["id"], q["question"], q["answers"], q["gold_doc_ids"]) for q in result.questions_train] == [
        ("1", "Do cells divide?", [], [ids["d1"], ids["d3"]]), ("2", "Do atoms bond?", [], [ids["d2"]])]
    error = only_error(result, "unresolved_gold")
    assert (error["file"], error["line"], error["kind"]) == (str(folder / "qrels" / "test.tsv"), 5, "qrels")
    assert result.report["counts"]["qrels"] == {"read": 5, "kept": 4, "merged": 0, "skipped": 0, "rejected": 1}
    assert result.report["counts"]["questions"]["skipped"] == 1
    assert result.report["beir"] == {"split": "test", "qrels_not_relevant": 1}
    assert_balanced(result)


# ----------------------------------------------------------------------------- bad input, one test per kind

def import_plain(tmp_path, lines, **spec):
    path = write_lines(tmp_path / "docs.jsonl", lines)
    return path, import_corpus({"source": "jsonl", "path": str(path), **spec})


def test_malformed_json_line(tmp_path):
    path, result = import_plain(tmp_path, [PLAIN[0], '{"id": "x", "text": "unterminated', PLAIN[1], "[1, 2]"])
    error = only_error(result, "malformed_json")
    assert (error["file"], error["line"], error["where"]) == (str(path), 2, f"{path}:2")
    assert only_error(result, "not_an_object")["line"] == 4
    assert [d["source_id"] for d in result.documents] == ["a", "b"]
    assert result.report["counts"]["documents"]["read"] == 4
    assert_balanced(result)


def test_malformed_json_list_keeps_earlier_items(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text('[\n{"title": "A", "text": "First."},\n{"title": "B", "text": "Second."},\n{"title": oops}\n]\n')
    result = import_corpus({"source": "musique", "path": str(write_json(tmp_path / "q.json", [])),
                            "corpus_path": str(path)})
    assert [d["title"] for d in result.documents] == ["A", "B"]
    error = only_error(result, "malformed_json")
    assert (error["line"], error["item"]) == (4, 3) and "rest of the file" in error["message"]


def test_missing_field(tmp_path):
    path, result = import_plain(tmp_path, [PLAIN[0], {"id": "x", "title": "No text"}, {"id": "y", "text": 5}])
    error = only_error(result, "missing_field")
    assert (error["file"], error["line"]) == (str(path), 2) and "'text'" in error["message"]
    assert only_error(result, "invalid_field")["line"] == 3
    assert [d["source_id"] for d in result.documents] == ["a"]
    assert_balanced(result)


def test_empty_text(tmp_path):
    path, result = import_plain(tmp_path, [{"id": "e", "title": "Blank", "text": "  \n "}, PLAIN[1]])
    error = only_error(result, "empty_text")
    assert (error["file"], error["line"], error["kind"]) == (str(path), 1, "documents")
    assert [d["source_id"] for d in result.documents] == ["b"]
    assert result.report["counts"]["documents"] == {"read": 2, "kept": 1, "merged": 0, "skipped": 0, "rejected": 1}


def test_non_utf8_line(tmp_path):
    path, result = import_plain(tmp_path, [PLAIN[0], b'{"id": "x", "text": "caf\xe9 latin-1"}', PLAIN[1],
                                           '{"id": "s", "text": "lone \\udc80 escape"}'])
    assert [e["reason"] for e in result.errors] == ["non_utf8", "non_utf8"]  # the escape cannot be written as UTF-8
    error = result.errors[0]
    assert (error["file"], error["line"], error["where"]) == (str(path), 2, f"{path}:2") and "0xe9" in error["message"]
    assert result.errors[1]["line"] == 4 and "surrogate" in result.errors[1]["message"]
    assert [d["source_id"] for d in result.documents] == ["a", "b"]
    assert_balanced(result)


def test_non_utf8_in_one_line_json_list_costs_one_item(tmp_path):
    path = tmp_path / "hotpot.json"
    good = hotpot_item("g", "Q?", "A", [["T", ["Some text."]]], [["T", 0]])
    bad = json.dumps(hotpot_item("b", "Q2?", "A", [["U", ["PLACEHOLDER"]]], [])).encode().replace(b"PLACEHOLDER", b"\xff\xfe")
    path.write_bytes(b"[" + json.dumps(good).encode() + b", " + bad + b", " + json.dumps({**good, "_id": "g2"}).encode() + b"]")
    result = import_corpus({"source": "hotpotqa", "path": str(path), "eval_fraction": 0})
    assert [q["id"] for q in result.questions_train] == ["g", "g2"]
    error = only_error(result, "non_utf8")
    assert (error["line"], error["item"], error["where"]) == (1, 2, f"{path}:1 (item 2)")


def test_duplicate_id(tmp_path):
    path, result = import_plain(tmp_path, [PLAIN[0], {"id": "a", "title": "Other", "text": "Different content."}, PLAIN[1]])
    error = only_error(result, "duplicate_id")
    assert (error["file"], error["line"]) == (str(path), 2)
    assert "'a'" in error["message"] and "docs.jsonl:1" in error["message"]
    assert [d["text"] for d in result.documents] == [PLAIN[0]["text"], PLAIN[1]["text"]]  # the first one is kept
    assert_balanced(result)


def test_duplicate_question_id(tmp_path):
    items = [hotpot_item("q", "First?", "A", [["T", ["Text."]]], [["T", 0]]),
             hotpot_item("q", "Another question?", "B", [["U", ["More."]]], [["U", 0]])]
    result = import_corpus({"source": "hotpotqa", "path": str(write_lines(tmp_path / "h.jsonl", items)),
                            "eval_fraction": 0})
    error = only_error(result, "duplicate_id")
    assert (error["line"], error["kind"]) == (2, "questions")
    assert [q["question"] for q in result.questions_train] == ["First?"]
    assert [d["title"] for d in result.documents] == ["T"]  # a rejected question keeps none of its paragraphs


def test_oversized_record(tmp_path):
    path, result = import_plain(tmp_path, [PLAIN[0], {"id": "big", "text": "x" * 101}, PLAIN[1]], max_doc_chars=100)
    error = only_error(result, "oversized")
    assert (error["file"], error["line"]) == (str(path), 2) and "101" in error["message"]
    assert [d["source_id"] for d in result.documents] == ["a", "b"]
    _, relaxed = import_plain(tmp_path, [{"id": "big", "text": "x" * 101}], max_doc_chars=None)
    assert len(relaxed.documents) == 1 and relaxed.errors == []


def test_a_long_document_is_chunked_not_rejected_when_chunking_is_on(tmp_path):
    """max_doc_chars's default (200,000) used to reject a long document even with doc_max_tokens set, and its
    text was lost (issue 13); with chunking on, only an explicit max_doc_chars refuses it."""
    long_text = " ".join(f"w{i}" for i in range(40_000))  # ~230,000 characters
    assert len(long_text) > 200_000
    _, whole = import_plain(tmp_path, [{"id": "long", "text": long_text}, PLAIN[1]])
    assert only_error(whole, "oversized")["line"] == 1
    _, chunked = import_plain(tmp_path, [{"id": "long", "text": long_text}, PLAIN[1]], doc_max_tokens=64)
    passages = [d for d in chunked.documents if d["source_id"] == "long"]
    assert chunked.errors == [] and len(passages) > 100
    assert passages[0]["text"].startswith("w0 ") and passages[-1]["text"].endswith(" w39999")
    _, capped = import_plain(tmp_path, [{"id": "long", "text": long_text}, PLAIN[1]], doc_max_tokens=64,
                             max_doc_chars=1000)
    assert only_error(capped, "oversized")["line"] == 1


def test_oversized_question(tmp_path):
    items = [hotpot_item("q", "Why " * 30 + "?", "A", [["T", ["Text."]]], [["T", 0]]),
             hotpot_item("ok", "Why?", "A", [["U", ["Other text."]]], [["U", 0]])]
    result = import_corpus({"source": "hotpotqa", "path": str(write_lines(tmp_path / "h.jsonl", items)),
                            "max_question_chars": 50})
    assert only_error(result, "oversized")["kind"] == "questions"
    assert [q["id"] for q in result.questions_train + result.questions_eval] == ["ok"]
    # with nothing left, the import is refused, naming why (it used to pass with 0 documents, issue 13)
    with pytest.raises(ValueError, match=r"gave no documents \(1 rejected as oversized\); first: .*h\.jsonl:1"):
        import_corpus({"source": "hotpotqa", "path": str(write_lines(tmp_path / "h.jsonl", items[:1])),
                       "max_question_chars": 50})


def test_strict_raises_on_first_bad_record(tmp_path):
    path = write_lines(tmp_path / "docs.jsonl", [PLAIN[0], {"id": "x"}, "not json"])
    with pytest.raises(ValueError, match=rf"^{path}:2: missing_field: missing field 'text'$"):
        import_corpus({"source": "jsonl", "path": str(path), "strict": True})
    with pytest.raises(ValueError, match=r"docs.jsonl:2: missing_field"):
        import_corpus({"source": "jsonl", "path": str(path)}, strict=True)


# ----------------------------------------------------------------------------- dedup, ids, chunking, split

def test_duplicate_content_is_reported_and_removed(tmp_path):
    first = {"id": "x1", "title": "Same", "text": "Same text."}
    path, result = import_plain(tmp_path, [first, PLAIN[1], {"id": "x2", "title": " Same ", "text": "Same text.  "},
                                           {"title": "Same", "text": "Same text."}])
    assert [d["source_id"] for d in result.documents] == ["x1", "b"]
    dups = [e for e in result.errors if e["reason"] == "duplicate_content"]
    assert [e["line"] for e in dups] == [3, 4] and all("docs.jsonl:1" in e["message"] for e in dups)
    assert result.report["counts"]["documents"] == {"read": 4, "kept": 2, "merged": 0, "skipped": 0, "rejected": 2}


def test_ids_are_stable_content_hashes(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", PLAIN)
    b = write_lines(tmp_path / "b.jsonl", [{**PLAIN[2], "id": "z"}, PLAIN[1], PLAIN[0]])
    ids_a = {d["text"]: d["id"] for d in import_corpus({"source": "jsonl", "path": str(a)}).documents}
    ids_b = {d["text"]: d["id"] for d in import_corpus({"source": "jsonl", "path": str(b)}).documents}
    assert ids_a == ids_b  # order, file and source id do not matter
    assert doc_id("Alpha", "Alpha is the first letter.") == "doc-" + __import__("hashlib").sha1(
        b"Alpha\nAlpha is the first letter.").hexdigest()[:16]
    assert len(set(ids_a.values())) == 3 and all(len(i) == 20 for i in ids_a.values())


def test_chunk_text_with_overlap():
    text = " ".join(f"w{i}" for i in range(10))
    assert chunk_text(text, None, 4, 1) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert chunk_text(text, None, 4, 0) == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    assert chunk_text(text, str.split, 5, 2) == ["w0 w1 w2 w3 w4", "w3 w4 w5 w6 w7", "w6 w7 w8 w9"]
    assert chunk_text("short text", None, 4, 1) == ["short text"]
    with pytest.raises(ValueError, match="overlap"):
        chunk_text(text, None, 4, 4)


def test_chunk_text_with_a_subword_tokenizer():
    tok = load_tokenizer("embedded-minilm")
    text = ("The Rhone is a major river of Europe, rising in the Swiss Alps and flowing through Lake Geneva "
            "before crossing southeastern France to the Mediterranean Sea near Marseille. ") * 3
    chunks = chunk_text(text, tok, 16, 4)
    assert len(chunks) > 3
    for chunk in chunks:
        assert len(tok(chunk, add_special_tokens=False)["input_ids"]) <= 16
        assert chunk in text  # chunks are verbatim slices that end on word boundaries
    words = text.split()
    covered = " ".join(chunks).split()
    assert set(words) <= set(covered)
    for left, right in zip(chunks, chunks[1:]):  # consecutive chunks overlap
        assert left.split()[-1] in right.split()[:8]


def test_chunked_documents_keep_parent_and_gold_maps_to_all_chunks(tmp_path):
    long_text = " ".join(f"w{i}" for i in range(10))
    docs, mapping = chunk_documents([{"id": "doc-p", "title": "T", "text": long_text}], None, 4, 1)
    assert [(d["id"], d["parent_id"], d["chunk"]) for d in docs] == [
        ("doc-p-c0", "doc-p", 0), ("doc-p-c1", "doc-p", 1), ("doc-p-c2", "doc-p", 2)]
    assert mapping == {"doc-p": ["doc-p-c0", "doc-p-c1", "doc-p-c2"]}

    items = [hotpot_item("q", "Which word?", "w9", [["Long", [long_text]], ["Short", ["Tiny doc."]]],
                         [["Long", 0], ["Short", 0]])]
    spec = {"source": "hotpotqa", "path": str(write_lines(tmp_path / "h.jsonl", items)), "eval_fraction": 0,
            "doc_max_tokens": 4, "overlap": 1}
    result = import_corpus(spec)
    parent, short = doc_id("Long", long_text), doc_id("Short", "Tiny doc.")
    assert [d["id"] for d in result.documents] == [f"{parent}-c0", f"{parent}-c1", f"{parent}-c2", short]
    assert result.questions_train[0]["gold_doc_ids"] == [f"{parent}-c0", f"{parent}-c1", f"{parent}-c2", short]
    assert result.report["chunking"]["documents_chunked"] == 1
    assert [d["id"] for d in import_corpus(spec).documents] == [d["id"] for d in result.documents]  # stable


def test_clara_stage1_with_chunking_uses_the_chunk_holding_the_answer(tmp_path):
    text = "alpha beta gamma delta epsilon zeta eta theta"
    path = write_lines(tmp_path / "p.jsonl", [{"data_type": "qa", "question": ["Last?"], "answers": ["theta"], "docs": [text]}])
    result = import_corpus({"source": "clara_stage1", "path": str(path), "eval_fraction": 0,
                            "doc_max_tokens": 4, "overlap": 0})
    assert result.stage1[0]["doc"] == "epsilon zeta eta theta"
    assert result.stage1[0]["doc_id"] == result.questions_train[0]["gold_doc_ids"][1]


def test_seeded_split_is_deterministic_and_disjoint():
    questions = [{"id": f"q{i}", "question": f"Q{i}?"} for i in range(200)]
    train, evaluation = split_questions(questions, 0.2, seed=7)
    again = split_questions(list(reversed(questions)), 0.2, seed=7)
    assert len(evaluation) == 40 and len(train) == 160
    assert {q["id"] for q in again[1]} == {q["id"] for q in evaluation}  # order of the input does not matter
    assert not {q["id"] for q in train} & {q["id"] for q in evaluation}
    assert {q["id"] for q in train} | {q["id"] for q in evaluation} == {q["id"] for q in questions}
    assert [q["id"] for q in train] == sorted((q["id"] for q in train), key=lambda s: int(s[1:]))  # input order kept
    assert {q["id"] for q in split_questions(questions, 0.2, seed=8)[1]} != {q["id"] for q in evaluation}
    assert len(split_questions(questions, 0.5, seed=7, num_eval=3)[1]) == 3
    assert len(split_questions(questions[:3], 0.1, seed=7)[1]) == 1  # a positive fraction holds out at least one


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="not importable"):
        import_corpus({"source": "xml", "path": "x"})
    with pytest.raises(ValueError, match="needs 'path'"):
        import_corpus({"source": "jsonl"})
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        import_corpus({"source": "jsonl", "path": "missing.jsonl"}, root=tmp_path)


def test_relative_paths_and_write_layout(tmp_path):
    write_lines(tmp_path / "data" / "docs.jsonl", PLAIN + ["oops"])
    result = import_corpus({"source": "jsonl", "path": "data/docs.jsonl", "num_people": 5, "typo_key": 1},
                           root=tmp_path)
    assert result.report["ignored_spec_keys"] == ["typo_key"]
    out = tmp_path / "raw_corpus"
    stats = write_import(out, result)
    assert sorted(p.name for p in out.iterdir()) == [
        "documents.jsonl", "import_report.json", "questions_eval.jsonl", "questions_train.jsonl",
        "rejected.jsonl", "stage1.jsonl", "stats.json"]
    assert read_jsonl(out / "documents.jsonl") == result.documents
    assert read_jsonl(out / "rejected.jsonl") == result.errors
    assert result.errors[0]["file"] == str(tmp_path / "data" / "docs.jsonl") and result.errors[0]["line"] == 4
    report = json.loads((out / "import_report.json").read_text())
    assert report["counts"]["documents"] == {"read": 4, "kept": 3, "merged": 0, "skipped": 0, "rejected": 1}
    assert report["errors_total"] == 1 and not report["errors_truncated"]
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["documents"] == {"total": 3, "chunks": 0} and stats["rejected"] == 1
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_import(out, import_corpus({"source": "jsonl", "path": "data/docs.jsonl"}, root=tmp_path))
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {k: v for k, v in after.items() if k != "import_report.json"} == \
           {k: v for k, v in before.items() if k != "import_report.json"}  # same input, same bytes


# ----------------------------------------------------------------------------- real data (../shared/data)

def shared(name: str) -> Path:
    folder = SHARED / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real data lives outside the repository)")
    return folder


@pytest.mark.shared_data
def test_real_musique_mini(tmp_path):
    folder = shared("musique_mini")
    raw = json.loads((folder / "musique_train.json").read_text())
    result = import_corpus({"source": "musique", "path": str(folder / "musique_train.json"),
                            "corpus_path": str(folder / "musique_train_corpus.json"), "eval_fraction": 0.1})
    assert result.errors == []
    assert result.report["counts"]["questions"] == {"read": 100, "kept": 100, "merged": 0, "skipped": 0, "rejected": 0}
    # 1,890 corpus paragraphs, none repeated; all 2,000 question paragraphs are among them.
    assert result.report["counts"]["documents"] == {"read": 3890, "kept": 1890, "merged": 2000, "skipped": 0, "rejected": 0}
    assert len(result.documents) == 1890 and len({d["id"] for d in result.documents}) == 1890
    assert (len(result.questions_train), len(result.questions_eval)) == (90, 10)
    questions = {q["id"]: q for q in result.questions_train + result.questions_eval}
    by_id = {d["id"]: d for d in result.documents}
    supporting = 0
    for item in raw:
        q = questions[item["id"]]
        gold = [p for p in item["paragraphs"] if p["is_supporting"]]
        supporting += len(gold)
        assert [(by_id[g]["title"], by_id[g]["text"]) for g in q["gold_doc_ids"]] == \
               [(p["title"], p["paragraph_text"].strip()) for p in gold]
        assert q["answers"][0] == item["answer"]
    assert supporting == 237
    assert Counter(q["type"] for q in questions.values()) == {"2hop": 68, "3hop1": 24, "4hop1": 3, "3hop2": 3, "4hop3": 2}
    stats = write_import(tmp_path / "out", result)
    assert stats["documents"]["total"] == 1890 and stats["questions"]["eval"]["total"] == 10


@pytest.mark.shared_data
def test_real_wiki_scp_qa():
    folder = shared("wiki_scp_qa")
    path = folder / "wiki_scp_qa.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    unique_pairs = {(r["docs"][0].strip(), q.strip(), a.strip()) for r in raw for q, a in zip(r["question"], r["answers"])}
    result = import_corpus({"source": "clara_stage1", "path": str(path), "eval_fraction": 0.1, "seed": 0})
    counts = result.report["counts"]
    assert counts["documents"] == {"read": 700, "kept": 700, "merged": 0, "skipped": 0, "rejected": 0}
    # 5,520 pairs, of which 18 repeat an earlier pair of the same passage word for word: reported, then dropped.
    assert counts["questions"] == {"read": 5520, "kept": 5502, "merged": 0, "skipped": 0, "rejected": 18}
    assert len(unique_pairs) == 5502
    assert result.report["rejected_by_reason"] == {"duplicate_content": 18}
    assert all(e["file"] == str(path) and e["kind"] == "questions" for e in result.errors)
    assert (len(result.questions_train), len(result.questions_eval)) == (4952, 550)
    assert len(result.stage1) == 4952 and result.report["stage1"]["held_out_for_eval"] == 550
    eval_questions = {(q["gold_doc_ids"][0], q["question"]) for q in result.questions_eval}
    assert not eval_questions & {(r["doc_id"], r["question"]) for r in result.stage1}
    docs = {d["id"]: d["text"] for d in result.documents}
    assert {(docs[r["doc_id"]], r["question"], r["answer"]) for r in result.stage1} <= unique_pairs
