import pytest

from clara_pipeline.corpus import generate_corpus
from clara_pipeline.retrieval import BM25Retriever, build_candidates, insert_gold

SMALL = {"num_people": 30, "num_places": 10, "num_organisations": 10, "num_works": 15,
         "num_train_questions": 60, "num_eval_questions": 20}


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(SMALL, seed=0)


@pytest.fixture(scope="module")
def retriever(corpus):
    return BM25Retriever(corpus["documents"])


def test_finds_document_named_in_query(corpus, retriever):
    docs = corpus["documents"]
    hits = retriever.search([f"Tell me about {d['title']}" for d in docs], k=3)
    assert all(h[0][0] == d["id"] for d, h in zip(docs, hits))
    for h in hits:
        scores = [s for _, s in h]
        assert scores == sorted(scores, reverse=True)


def test_k_is_clipped_and_unknown_words_are_harmless(corpus, retriever):
    (hits,) = retriever.search(["zzzz qqqq the of"], k=10_000)
    assert len(hits) == len(corpus["documents"]) and all(s == 0.0 for _, s in hits)
    assert retriever.search([], k=3) == []


def test_insert_gold_replaces_lowest_ranked_non_gold():
    assert insert_gold(["a", "b", "c", "d"], ["b"]) == ["a", "b", "c", "d"]
    assert insert_gold(["a", "b", "c", "d"], ["x"]) == ["a", "b", "c", "x"]
    assert insert_gold(["a", "b", "c", "d"], ["x", "d", "y"]) == ["a", "y", "x", "d"]
    with pytest.raises(ValueError):
        insert_gold(["a"], ["x", "y"])


def test_candidates_always_contain_gold(corpus, retriever):
    questions = corpus["questions_train"] + corpus["questions_eval"]
    records, stats = build_candidates(questions, retriever, n=5)
    assert len(records) == len(questions)
    for q, r in zip(questions, records):
        assert r["question"] == q["question"] and r["answers"] == q["answers"]
        assert len(r["candidate_doc_ids"]) == 5 == len(set(r["candidate_doc_ids"]))
        assert set(q["gold_doc_ids"]) <= set(r["candidate_doc_ids"])
        assert len(r["retrieved_doc_ids"]) == 5
        # Non-replaced slots keep BM25's order.
        kept = [d for d in r["candidate_doc_ids"] if d in r["retrieved_doc_ids"]]
        assert kept == [d for d in r["retrieved_doc_ids"] if d in kept]
    assert 0.0 < stats["gold_recall_at_n"] <= 1.0 and stats["setting"] == "oracle"
    missing = sum(not set(r["gold_doc_ids"]) <= set(r["retrieved_doc_ids"]) for r in records)
    assert stats["questions_needing_insertion"] == missing
    # gold is not always in first position
    assert any(r["candidate_doc_ids"][0] not in r["gold_doc_ids"] for r in records)


def test_normal_setting_keeps_the_retriever_list_and_both_lists_are_recorded(corpus, retriever):
    questions = corpus["questions_train"]
    records, stats = build_candidates(questions, retriever, n=3, setting="normal")
    assert stats["setting"] == "normal"
    for r in records:
        assert r["candidate_doc_ids"] == r["retrieved_doc_ids"]
        assert set(r["gold_doc_ids"]) <= set(r["oracle_doc_ids"])
    missed = [r for r in records if not set(r["gold_doc_ids"]) <= set(r["retrieved_doc_ids"])]
    assert missed and stats["questions_needing_insertion"] == len(missed)  # n=3 misses some gold documents
    with pytest.raises(ValueError, match="setting"):
        build_candidates(questions, retriever, n=3, setting="gold")


def test_dense_retriever_finds_a_document_by_its_own_text(corpus):
    from clara_pipeline.retrieval import make_retriever

    docs = corpus["documents"][:30]
    dense = make_retriever("dense", docs)
    hits = dense.search([f"{d['title']}. {d['text']}" for d in docs[:5]], k=3)
    assert [h[0][0] for h in hits] == [d["id"] for d in docs[:5]]
    assert all(h[0][1] >= h[1][1] >= h[2][1] for h in hits)
    with pytest.raises(ValueError, match="retriever"):
        make_retriever("splade", docs)
