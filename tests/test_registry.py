"""The promotion rule, on its own (the end-to-end test exercises it through MLflow)."""

from clara_pipeline.registry import CHALLENGER, CHAMPION, decide


def cand(version="2", score=0.5, fp="abc"):
    return {"version": version, "score": score, "eval_fingerprint": fp}


def test_first_model_becomes_champion():
    assert decide(cand(), None, "f1")[0] == CHAMPION


def test_better_model_on_same_questions_is_promoted():
    alias, reason = decide(cand(score=0.6), {"version": "1", "score": 0.5, "eval_fingerprint": "abc"}, "f1")
    assert alias == CHAMPION and "beats" in reason


def test_equal_or_worse_model_stays_challenger():
    for score in (0.5, 0.4):
        alias, reason = decide(cand(score=score), {"version": "1", "score": 0.5, "eval_fingerprint": "abc"}, "f1")
        assert alias == CHALLENGER and "does not beat" in reason


def test_scores_on_different_questions_are_not_compared():
    alias, reason = decide(cand(score=0.9, fp="new"), {"version": "1", "score": 0.1, "eval_fingerprint": "old"}, "f1")
    assert alias == CHALLENGER and "not comparable" in reason


def test_rebenchmarking_the_champion_keeps_it():
    assert decide(cand(version="1", score=0.1), {"version": "1", "score": 0.5, "eval_fingerprint": "abc"}, "f1")[0] == CHAMPION
