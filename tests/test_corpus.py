import json

import pytest

from clara_pipeline.corpus import MAX_WORDS, MIN_WORDS, generate_corpus, write_corpus
from clara_pipeline.jsonl import read_jsonl, write_jsonl

SMALL = {"num_people": 30, "num_places": 10, "num_organisations": 10, "num_works": 15,
         "num_train_questions": 120, "num_eval_questions": 30}


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(SMALL, seed=0)


def test_same_seed_gives_identical_files(tmp_path):
    write_corpus(tmp_path / "a", generate_corpus(SMALL, seed=3))
    write_corpus(tmp_path / "b", generate_corpus(SMALL, seed=3))
    for name in ["documents.jsonl", "questions_train.jsonl", "questions_eval.jsonl", "stats.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_different_seed_gives_different_corpus(corpus):
    other = generate_corpus(SMALL, seed=1)
    assert [d["text"] for d in other["documents"]] != [d["text"] for d in corpus["documents"]]


def test_document_shape_and_counts(corpus):
    docs = corpus["documents"]
    kinds = [d["kind"] for d in docs]
    assert kinds.count("person") == 30 and kinds.count("place") == 10
    assert kinds.count("organisation") == 10 and kinds.count("work") == 15
    assert len({d["id"] for d in docs}) == len(docs)
    assert len({d["title"] for d in docs}) == len(docs)
    for d in docs:
        assert d["id"].startswith("doc-") and len(d["id"]) == 12
        assert MIN_WORDS <= len(d["text"].split()) <= MAX_WORDS, d["text"]
        assert d["text"].startswith(d["title"])  # the first sentence introduces the entity


def test_question_counts_and_mix(corpus):
    train, evaluation = corpus["questions_train"], corpus["questions_eval"]
    assert len(train) == 120 and len(evaluation) == 30
    types = [q["type"] for q in train + evaluation]
    assert types.count("single_hop") == 75 and types.count("bridge") == 45 and types.count("comparison") == 30
    assert {q["type"] for q in evaluation} == {"single_hop", "bridge", "comparison"}


def test_train_and_eval_are_disjoint(corpus):
    train_texts = {q["question"] for q in corpus["questions_train"]}
    eval_texts = {q["question"] for q in corpus["questions_eval"]}
    assert not train_texts & eval_texts
    assert len(train_texts) == len(corpus["questions_train"])
    ids = [q["id"] for q in corpus["questions_train"] + corpus["questions_eval"]]
    assert len(set(ids)) == len(ids)


def test_gold_docs_exist_and_contain_answers(corpus):
    by_id = {d["id"]: d for d in corpus["documents"]}
    for q in corpus["questions_train"] + corpus["questions_eval"]:
        assert q["answers"] and all(isinstance(a, str) and a for a in q["answers"])
        assert all(g in by_id for g in q["gold_doc_ids"])
        gold_text = " ".join(by_id[g]["title"] + " " + by_id[g]["text"] for g in q["gold_doc_ids"]).lower()
        assert q["answers"][0].lower() in gold_text, q
        if q["type"] == "single_hop":
            assert len(q["gold_doc_ids"]) == 1
        else:
            assert len(q["gold_doc_ids"]) == 2 and q["gold_doc_ids"][0] != q["gold_doc_ids"][1]


def test_bridge_answer_needs_the_second_hop(corpus):
    by_id = {d["id"]: d for d in corpus["documents"]}
    for q in corpus["questions_train"]:
        if q["type"] == "bridge":
            first, second = (by_id[g]["text"].lower() for g in q["gold_doc_ids"])
            assert q["answers"][0].lower() in second
            # The question names the first-hop entity, never the second-hop one.
            assert by_id[q["gold_doc_ids"][0]]["title"] in q["question"]


def test_comparison_answer_is_one_of_the_two_entities(corpus):
    by_id = {d["id"]: d for d in corpus["documents"]}
    for q in corpus["questions_eval"] + corpus["questions_train"]:
        if q["type"] == "comparison":
            titles = [by_id[g]["title"] for g in q["gold_doc_ids"]]
            assert q["answers"][0] in titles
            assert all(t in q["question"] for t in titles)


def test_write_corpus_stats(tmp_path, corpus):
    stats = write_corpus(tmp_path, corpus)
    assert stats["documents"]["total"] == 65 and stats["documents"]["person"] == 30
    assert stats["questions"]["eval"]["total"] == 30
    assert json.loads((tmp_path / "stats.json").read_text()) == stats
    assert read_jsonl(tmp_path / "documents.jsonl") == corpus["documents"]


def test_too_many_questions_is_an_error():
    with pytest.raises(ValueError):
        generate_corpus({**SMALL, "num_people": 2, "num_places": 1, "num_organisations": 1, "num_works": 1,
                         "num_train_questions": 5000}, seed=0)


def test_jsonl_roundtrip_and_errors(tmp_path):
    path = tmp_path / "sub" / "x.jsonl"
    write_jsonl(path, [{"a": 1}, {"b": "é"}])
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}]
    assert [p.name for p in path.parent.iterdir()] == ["x.jsonl"]  # no temp file left behind
    path.write_text('{"a": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.jsonl:2"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.jsonl:2"):
        read_jsonl(path)


def test_pretraining_documents_are_another_draw_without_the_corpus_titles(corpus):
    from clara_pipeline.corpus import pretraining_documents

    first = pretraining_documents(200, seed=1)
    assert first == pretraining_documents(200, seed=1) and 190 <= len(first) <= 200
    assert len({d["id"] for d in first}) == len(first)
    titles = {d["title"] for d in first[:20]}
    kept = pretraining_documents(200, seed=1, exclude_titles=titles)
    assert len(kept) == len(first) - 20 and not titles & {d["title"] for d in kept}
    assert pretraining_documents(0, seed=1) == []
