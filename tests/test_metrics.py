import pytest

from clara_pipeline.metrics import aggregate, exact_match, mrr, normalize_answer, recall_at_k, token_f1


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
