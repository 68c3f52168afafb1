import pytest

from clara_pipeline.metrics import (QA_METRICS, aggregate, cover_exact_match, exact_match, mrr, normalize_answer,
                                    qa_scores, recall_at_k, sub_exact_match, token_f1)


def test_normalize_answer():
    assert normalize_answer("  The Silent  Harbor! ") == "silent harbor"
    assert normalize_answer("An apple, a day.") == "apple day"
    assert normalize_answer("1,278,500") == "1278500"
    assert normalize_answer("Theatre") == "theatre"  # "the" only removed as a whole word


def test_exact_match_uses_best_alias():
    assert exact_match("the Zibrer river", ["Zibrer River", "Zibrer"]) == 1.0
    assert exact_match("Zibrer", ["Zibrer River", "Zibrer"]) == 1.0
    assert exact_match("Zibrer Lake", ["Zibrer River", "Zibrer"]) == 0.0
    assert exact_match("Yes.", ["yes"]) == 1.0
    assert exact_match("no", ["yes"]) == 0.0
    assert exact_match("", ["yes"]) == 0.0


def test_token_f1_hand_worked():
    # pred tokens {hofor, nunta, jr}, gold {hofor, nunta}: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("Hofor Nunta Jr", ["Hofor Nunta"]) == pytest.approx(0.8)
    # best alias wins: "Zibrer" vs ["Zibrer River" (F1 2/3), "Zibrer" (1.0)]
    assert token_f1("Zibrer", ["Zibrer River", "Zibrer"]) == 1.0
    assert token_f1("Zibrer", ["Zibrer River"]) == pytest.approx(2 / 3)
    assert token_f1("", ["Zibrer"]) == 0.0
    assert token_f1("the", ["a"]) == 1.0  # both normalise to empty
    assert token_f1("paris", ["london"]) == 0.0
    # repeated tokens count once per occurrence: pred "a b b", gold "b" -> P=1/3, R=1, F1=0.5
    assert token_f1("x y y", ["y"]) == pytest.approx(0.5)


def test_recall_and_mrr():
    retrieved = ["d1", "d2", "d3", "d4"]
    assert recall_at_k(retrieved, ["d2", "d9"], 1) == 0.0
    assert recall_at_k(retrieved, ["d2", "d9"], 2) == 0.5
    assert recall_at_k(retrieved, ["d2", "d4"], 4) == 1.0
    assert recall_at_k(retrieved, [], 4) == 0.0
    assert mrr(retrieved, ["d3", "d4"]) == pytest.approx(1 / 3)
    assert mrr(retrieved, ["d1"]) == 1.0
    assert mrr(retrieved, ["d9"]) == 0.0


def test_aggregate_overall_and_per_type():
    rows = [
        {"type": "single_hop", "em": 1.0, "f1": 1.0},
        {"type": "single_hop", "em": 0.0, "f1": 0.5},
        {"type": "bridge", "em": 0.0, "f1": 0.0},
    ]
    out = aggregate(rows, ["em", "f1"])
    assert out["all"] == {"count": 3, "em": pytest.approx(1 / 3), "f1": pytest.approx(0.5)}
    assert out["single_hop"] == {"count": 2, "em": 0.5, "f1": 0.75}
    assert out["bridge"]["count"] == 1
    assert list(out) == ["all", "bridge", "single_hop"]
    assert aggregate([{"em": 1.0}], ["em"]) == {"all": {"count": 1, "em": 1.0}}
    assert aggregate([], ["em"]) == {"all": {"count": 0, "em": 0.0}}


def test_normalisation_punctuation_and_articles_inside_words():
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("Jean-Paul") == "jeanpaul"
    assert normalize_answer("A") == ""  # an article alone normalises to nothing
    assert normalize_answer("another") == "another"


def test_sub_em_hand_worked():
    # the gold's normalised string inside the normalised answer
    assert sub_exact_match("It was the Zibrer River.", ["Zibrer River"]) == 1.0
    assert sub_exact_match("Zibrer", ["Zibrer River"]) == 0.0  # the answer inside the gold is not enough
    # best alias: the second one is contained
    assert sub_exact_match("in Paris", ["City of Paris", "Paris"]) == 1.0
    # articles and punctuation go before comparing
    assert sub_exact_match("The answer is: a Silent Harbor!", ["the silent harbor"]) == 1.0
    # yes / no
    assert sub_exact_match("Yes, it is.", ["yes"]) == 1.0
    assert sub_exact_match("no", ["yes"]) == 0.0
    # numbers: "1,278,500" -> "1278500"; plain containment, as FlashRAG, so "1" is in "1990"
    assert sub_exact_match("about 1,278,500 people", ["1278500"]) == 1.0
    assert sub_exact_match("1990", ["1"]) == 1.0
    # empty answers
    assert sub_exact_match("", ["Paris"]) == 0.0
    assert sub_exact_match("", ["the"]) == 1.0  # both empty after normalisation
    assert sub_exact_match("Paris", ["the"]) == 0.0  # an empty gold is not in every answer
    assert sub_exact_match("Paris", []) == 0.0


def test_cover_em_hand_worked():
    # every gold token among the answer's tokens, any order
    assert cover_exact_match("River Zibrer", ["the Zibrer River"]) == 1.0
    assert cover_exact_match("Zibrer", ["Zibrer River"]) == 0.0  # "river" missing
    # tokens, not substrings: "parisian" does not cover "paris", and "1990" does not cover "1"
    assert cover_exact_match("Parisian", ["Paris"]) == 0.0
    assert cover_exact_match("1990", ["1"]) == 0.0
    assert cover_exact_match("born in 1990 in Paris", ["1990"]) == 1.0
    # multi-token gold, extra words in the answer are allowed
    assert cover_exact_match("Hofor Nunta Jr", ["Hofor Nunta"]) == 1.0
    assert cover_exact_match("Nunta", ["Nunta Hofor", "Hofor"]) == 0.0
    assert cover_exact_match("Hofor", ["Nunta Hofor", "Hofor"]) == 1.0  # second alias
    assert cover_exact_match("Yes.", ["yes"]) == 1.0
    assert cover_exact_match("", ["yes"]) == 0.0
    assert cover_exact_match("", ["An"]) == 1.0
    assert cover_exact_match("yes", ["An"]) == 0.0


def test_qa_scores_every_metric_on_one_answer():
    # pred "1,278 inhabitants" -> "1278 inhabitants"; gold "1278": EM 0, F1 2*(1/2*1)/(1.5) = 2/3, sub 1, cover 1
    s = qa_scores("1,278 inhabitants", ["1278"])
    assert set(s) == set(QA_METRICS)
    assert s == {"em": 0.0, "f1": pytest.approx(2 / 3), "sub_em": 1.0, "cover_em": 1.0}
    # order matters for nothing but EM / sub_em: "river zibrer" vs gold "Zibrer River"
    s = qa_scores("river zibrer", ["Zibrer River"])
    assert s == {"em": 0.0, "f1": 1.0, "sub_em": 0.0, "cover_em": 1.0}
    assert qa_scores("The Zibrer River", ["zibrer river"]) == {"em": 1.0, "f1": 1.0, "sub_em": 1.0, "cover_em": 1.0}
    assert qa_scores("", ["Paris"]) == {"em": 0.0, "f1": 0.0, "sub_em": 0.0, "cover_em": 0.0}
    # the metrics are ordered: EM <= sub_em and EM <= cover_em, on any answer
    for pred, golds in [("a b c", ["b"]), ("x", ["x y"]), ("paris", ["Paris", "France"]), ("", [""])]:
        s = qa_scores(pred, golds)
        assert s["em"] <= s["sub_em"] and s["em"] <= s["cover_em"] and s["em"] <= s["f1"]


def test_aggregate_every_qa_metric_per_type():
    rows = [{"type": "bridge", **qa_scores("Paris", ["Paris"])},
            {"type": "bridge", **qa_scores("in Paris", ["Paris"])},
            {"type": "comparison", **qa_scores("no", ["yes"])}]
    out = aggregate(rows, QA_METRICS)
    assert out["bridge"] == {"count": 2, "em": 0.5, "f1": pytest.approx((1 + 2 / 3) / 2), "sub_em": 1.0,
                             "cover_em": 1.0}
    assert out["comparison"] == {"count": 1, "em": 0.0, "f1": 0.0, "sub_em": 0.0, "cover_em": 0.0}
    assert out["all"]["sub_em"] == pytest.approx(2 / 3)
