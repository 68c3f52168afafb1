from collections import Counter

import pytest

from clara_pipeline.corpus import generate_corpus
from clara_pipeline.synthesis import (
    Filters, OfflineSynthesizer, build_stage1_records, content_words, filter_qa_pairs, find_answer_span,
    make_synthesizer, normalise, paraphrase_reject_reason, qa_reject_reason, split_sentences,
)

# Hand-written prose, unlike the generated corpus, so the synthesizer is not tied to its templates.
DOC = {
    "id": "doc-test",
    "title": "Mara Holt",
    "text": ("Mara Holt is a marine biologist. She was born in Port Elwin in 1950. "
             "In 1978, she joined the Northern Ocean Institute. Her best known book is Tides of Arden. "
             "She has studied about 1,200 species of coral."),
}
SMALL = {"num_people": 20, "num_places": 6, "num_organisations": 6, "num_works": 10,
         "num_train_questions": 40, "num_eval_questions": 10}


def test_qa_answers_are_in_doc_and_questions_unique():
    pairs = OfflineSynthesizer(seed=0).qa_pairs(DOC, max_pairs=20)
    questions = [q for q, _ in pairs]
    assert len(set(questions)) == len(questions)
    answers = {a for _, a in pairs}
    for q, a in pairs:
        assert a in DOC["text"]
        assert a.lower() not in q.lower()
        assert 3 <= len(q.split()) <= 40 and 1 <= len(a.split()) <= 8
    # Every salient span becomes a question: years, numbers and names.
    assert {"1950", "1978", "1,200", "Port Elwin", "Northern Ocean Institute", "Tides of Arden"} <= answers


def test_qa_question_forms():
    pairs = dict((a, q) for q, a in OfflineSynthesizer(seed=0).qa_pairs(DOC, max_pairs=20))
    assert pairs["1950"] == "About Mara Holt: She was born in Port Elwin in which year?"
    assert "___" in pairs["Port Elwin"] and pairs["Port Elwin"].startswith("About Mara Holt:")
    assert pairs["Mara Holt"] == "What is a marine biologist?"


def test_max_pairs_spreads_over_sentences():
    pairs = OfflineSynthesizer(seed=0).qa_pairs(DOC, max_pairs=3)
    assert len(pairs) == 3
    # round robin: first span of the first three sentences
    assert [a for _, a in pairs] == ["Mara Holt", "Port Elwin", "1978"]


def test_paraphrase_differs_and_keeps_content():
    synth = OfflineSynthesizer(seed=0)
    paraphrases = synth.paraphrases(DOC, n=2)
    assert len(paraphrases) == 2 and paraphrases[0] != paraphrases[1]
    for p in paraphrases:
        assert p != DOC["text"]
        assert split_sentences(p)[0] == split_sentences(DOC["text"])[0]
        assert content_words(p) == content_words(DOC["text"])


def test_two_sentence_paraphrase_still_differs():
    doc = {"id": "d", "title": "Kell", "text": "Kell is a village. It has a small harbour."}
    (p,) = OfflineSynthesizer(seed=0).paraphrases(doc, n=1)
    assert p != doc["text"] and content_words(p) == content_words(doc["text"])


def test_single_sentence_has_no_paraphrase():
    assert OfflineSynthesizer(seed=0).paraphrases({"id": "d", "text": "Only one sentence here."}, n=1) == []


def test_make_synthesizer():
    assert make_synthesizer({"backend": "offline"}, seed=0).name == "offline"
    with pytest.raises(ValueError, match="offline"):
        make_synthesizer({"backend": "gpt-9"}, seed=0)


def test_stage1_records_on_generated_corpus():
    docs = generate_corpus(SMALL, seed=0)["documents"]
    records, stats = build_stage1_records(docs, make_synthesizer({}, seed=0), max_qa_per_doc=4, paraphrases_per_doc=1)
    assert stats["docs"] == len(docs) and stats["docs_without_qa"] == 0
    assert stats["qa"] + stats["paraphrase"] == len(records) and stats["paraphrase"] == len(docs)
    assert [r["id"] for r in records] == [f"scp-{i}" for i in range(len(records))]
    by_id = {d["id"]: d for d in docs}
    per_doc = {}
    for r in records:
        assert r["doc"] == by_id[r["doc_id"]]["text"] and r["title"] == by_id[r["doc_id"]]["title"]
        if r["data_type"] == "qa":
            assert r["answer"] in r["doc"] and r["question"]
            per_doc[r["doc_id"]] = per_doc.get(r["doc_id"], 0) + 1
        else:
            assert r["data_type"] == "paraphrase" and r["question"] == "" and r["answer"] != r["doc"]
    assert max(per_doc.values()) <= 4
    again, _ = build_stage1_records(docs, make_synthesizer({}, seed=0), 4, 1)
    assert again == records  # deterministic


def test_clause_rewrites():
    from clara_pipeline.synthesis import _fronted_to_trailing, _passive_to_active, _trailing_to_fronted
    assert _trailing_to_fronted("She was born in Port Elwin in 1950.") == "In 1950, she was born in Port Elwin."
    assert _trailing_to_fronted("Mara Holt was born in Port Elwin in 1950.") == "In 1950, Mara Holt was born in Port Elwin."
    assert _fronted_to_trailing("In 1978, she joined the club.") == "She joined the club in 1978."
    assert _passive_to_active("It was written by Hofor Nunta.") == "Hofor Nunta wrote it."
    assert _passive_to_active("It was sold by Hofor Nunta.") is None


# ----------------------------------------------------------------------------- shared filters (every backend)

def test_find_answer_span_is_normalised_but_exact_for_numbers():
    text = DOC["text"]
    assert find_answer_span("port elwin", text) == "Port Elwin"            # case folded, document's spelling back
    assert find_answer_span("Tides  of Arden", text) == "Tides of Arden"   # whitespace folded
    assert find_answer_span("the northern ocean institute.", text) == "the Northern Ocean Institute"  # no stray "."
    assert find_answer_span("1,200", text) == "1,200"
    assert find_answer_span("1200", text) is None                         # numbers are exact
    assert find_answer_span("195", text) is None and find_answer_span("1951", text) is None
    assert find_answer_span("Elwi", text) is None                         # whole tokens only
    assert find_answer_span("Holt\u2019s book", "Mara Holt's book is short.") == "Holt's book"  # curly quote
    assert find_answer_span("", text) is None
    assert normalise("  Who, exactly,  was BORN in 3.5 years?") == "who exactly was born in 3.5 years"


def test_qa_reject_reasons():
    text, seen = DOC["text"], {normalise("Where was Mara Holt born?")}
    assert qa_reject_reason("In which year did she join the institute?", "1978", text, seen) is None
    assert qa_reject_reason("Where was Mara Holt born ?", "Port Elwin", text, seen) == "duplicate_question"
    assert qa_reject_reason("When was Mara Holt born?", "1951", text, seen) == "answer_not_in_doc"
    assert qa_reject_reason("Who is Mara Holt really?", "Mara Holt", text, seen) == "answer_in_question"
    assert qa_reject_reason("Born?", "1950", text, seen) == "question_length"
    assert qa_reject_reason("What did she join in 1978?", "in 1978 she joined the Northern Ocean Institute and more",
                            text, seen) == "answer_length"
    short = Filters(max_answer_words=2)
    assert qa_reject_reason("Which institute did she join?", "Northern Ocean Institute", text, set(), short) == "answer_length"


def test_filter_qa_pairs_counts_every_rejection():
    rejected = Counter()
    pairs = filter_qa_pairs([("Where was Mara Holt born?", "port elwin."), ("where was mara holt born", "Port Elwin"),
                             ("How many species has she studied?", "1200"),
                             ("How many coral species has she studied?", "1,200")], DOC["text"], 5, rejected)
    assert pairs == [("Where was Mara Holt born?", "Port Elwin"), ("How many coral species has she studied?", "1,200")]
    assert rejected == {"duplicate_question": 1, "answer_not_in_doc": 1}


def test_paraphrase_reject_reasons():
    text = DOC["text"]
    good = ("Mara Holt, a marine biologist, was born in 1950 in Port Elwin. She joined the Northern Ocean Institute "
            "in 1978. Tides of Arden is her best known book. She has studied about 1,200 coral species.")
    assert paraphrase_reject_reason(good, text, set()) is None
    assert paraphrase_reject_reason(good, text, {normalise(good)}) == "duplicate_paraphrase"
    assert paraphrase_reject_reason(text.upper(), text, set()) == "paraphrase_identical"
    assert paraphrase_reject_reason("  ", text, set()) == "paraphrase_empty"
    assert paraphrase_reject_reason("Mara Holt is a biologist.", text, set()) == "paraphrase_length"
    assert paraphrase_reject_reason(good + " " + good, text, set()) == "paraphrase_length"
    assert paraphrase_reject_reason(good.replace("1,200", "many"), text, set()) == "paraphrase_lost_number"
    assert paraphrase_reject_reason(good.replace("1,200", "1200"), text, set()) is None  # same number
    vague = ("Someone, a scientist of the sea, came into the world somewhere in 1950. That person later entered an "
             "academy in 1978. A volume exists too. The person looked at about 1,200 kinds of reef animals.")
    assert paraphrase_reject_reason(vague, text, set()) == "paraphrase_content"
    assert paraphrase_reject_reason(vague, text, set(), Filters(min_content_overlap=0.1)) is None


def test_offline_filters_from_params_and_stats():
    synth = make_synthesizer({"backend": "offline", "filters": {"max_answer_words": 1}}, seed=0)
    records, stats = build_stage1_records([DOC], synth, max_qa_per_doc=20, paraphrases_per_doc=1)
    assert stats["prompt_version"] == "offline-v2" and "llm" not in stats
    assert {r["answer"] for r in records if r["data_type"] == "qa"} == {"1950", "1978", "1,200"}
    assert stats["rejected"] == {"answer_length": 4}  # Mara Holt, Port Elwin, Northern Ocean Institute, Tides of Arden
    assert stats["docs_without_paraphrase"] == 0
    with pytest.raises(ValueError, match="unknown scp.filters"):
        make_synthesizer({"filters": {"max_answer": 1}}, seed=0)
