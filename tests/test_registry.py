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


def test_a_model_that_loses_to_a_baseline_is_never_champion():
    baselines = {"closed_book": 0.10, "bm25_text": 0.30}
    # not even as the first model, nor when it beats the current champion
    for current in (None, {"version": "1", "score": 0.1, "eval_fingerprint": "abc"}):
        alias, reason = decide(cand(score=0.25), current, "f1", baselines)
        assert alias == CHALLENGER and "bm25_text 0.3000" in reason and "closed_book" not in reason
    alias, _ = decide(cand(score=0.30), None, "f1", baselines)  # a tie does not beat it
    assert alias == CHALLENGER
    alias, reason = decide(cand(score=0.31), None, "f1", baselines)
    assert alias == CHAMPION and "bm25_text" in reason
    alias, reason = decide(cand(score=0.31), {"version": "1", "score": 0.4, "eval_fingerprint": "abc"}, "f1", baselines)
    assert alias == CHALLENGER and "does not beat champion v1" in reason


def test_two_projects_in_one_process_keep_their_own_stores(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; the second project must not inherit the first's."""
    from clara_pipeline import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "mlflow").mkdir(parents=True)
        with tracking.stage_run(root, "probe", {"root": str(root)}):
            pass
        assert tracking.tracking_uri(root).endswith(f"{root.name}/mlflow/mlflow.db")
    assert (a / "mlflow" / "mlflow.db").is_file() and (b / "mlflow" / "mlflow.db").is_file()
    mlflow = tracking.configure(a)
    assert len(mlflow.search_runs(experiment_names=[tracking.EXPERIMENT])) == 1
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'user.db'}")  # a user's own choice wins
    assert tracking.tracking_uri(a) == f"sqlite:///{tmp_path / 'user.db'}"
