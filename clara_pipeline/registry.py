"""The MLflow model registry: register the joint model, and move aliases only on benchmark evidence.

Aliases, not stages (stages are deprecated): ``champion`` is what `clara ask` and serving use;
``challenger`` is the newest model that did not beat it. Every decision is written as tags on the version
(``benchmark.<metric>``, ``eval_fingerprint``, ``promotion.decision``, ``promotion.reason``).
"""

from __future__ import annotations

from pathlib import Path

from clara_pipeline import tracking

CHAMPION, CHALLENGER = "champion", "challenger"


def register(stage_run, model_name: str, model_dir: Path, index_dir: Path) -> str:
    """Log the joint model + index as a pyfunc in the current run and register it; returns the version.

    Logged as a model from code (``clara_pipeline/serving_model.py``, nothing pickled), with a signature:
    a ``question`` column in, ``question``/``answer``/``documents`` out, params ``k`` and ``max_new_tokens``."""
    import mlflow

    from clara_pipeline import serving

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(serving.MODEL_CODE),
        artifacts={"model": str(model_dir), "index": str(index_dir)},
        signature=serving.SIGNATURE,
        pip_requirements=["clara-pipeline", "torch", "transformers", "peft", "faiss-cpu", "mlflow"],
        registered_model_name=model_name,
    )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_model_version_tag(model_name, version, "run_id", stage_run.run_id)
    return version


def champion(client, model_name: str):
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except Exception:  # no alias yet (MlflowException RESOURCE_DOES_NOT_EXIST)
        return None


def decide(candidate: dict, current: dict | None, metric: str) -> tuple[str, str]:
    """Pure decision rule, so it is testable without MLflow. Each dict: {version, score, eval_fingerprint}."""
    if current is None:
        return CHAMPION, "no champion yet: the first benchmarked model becomes champion"
    if current["version"] == candidate["version"]:
        return CHAMPION, "this version is already the champion; its benchmark was refreshed"
    if current.get("eval_fingerprint") != candidate["eval_fingerprint"]:
        return CHALLENGER, (f"champion v{current['version']} was benchmarked on evaluation set "
                            f"{current.get('eval_fingerprint')}, this model on {candidate['eval_fingerprint']}: "
                            "not comparable, so no automatic promotion (re-benchmark or `clara promote`)")
    if current.get("score") is None:
        return CHALLENGER, f"champion v{current['version']} has no recorded {metric}; promote by hand if wanted"
    if candidate["score"] > current["score"]:
        return CHAMPION, (f"{metric} {candidate['score']:.4f} beats champion v{current['version']} "
                          f"({current['score']:.4f}) on the same questions")
    return CHALLENGER, (f"{metric} {candidate['score']:.4f} does not beat champion v{current['version']} "
                        f"({current['score']:.4f}) on the same questions")


def promote(root: Path, model_name: str, version: str, headline: dict, metric: str, eval_fp: str) -> dict:
    """Record the benchmark on the version and set ``champion`` or ``challenger``. Returns the decision."""
    mlflow = tracking.configure(root)
    client = mlflow.MlflowClient()
    for key, value in headline.items():
        client.set_model_version_tag(model_name, version, tracking.mlflow_key(f"benchmark.{key}"), f"{value:.6f}")
    client.set_model_version_tag(model_name, version, "eval_fingerprint", eval_fp)

    current_mv = champion(client, model_name)
    current = None
    if current_mv is not None:
        score = current_mv.tags.get(f"benchmark.{metric}")
        current = {"version": str(current_mv.version), "score": float(score) if score is not None else None,
                   "eval_fingerprint": current_mv.tags.get("eval_fingerprint")}
    candidate = {"version": str(version), "score": float(headline[metric]), "eval_fingerprint": eval_fp}
    alias, reason = decide(candidate, current, metric)
    client.set_registered_model_alias(model_name, alias, version)
    client.set_model_version_tag(model_name, version, "promotion.decision", alias)
    client.set_model_version_tag(model_name, version, "promotion.reason", reason)
    return {"model_name": model_name, "version": str(version), "alias": alias, "reason": reason,
            "metric": metric, "score": candidate["score"],
            "previous_champion": current["version"] if current else None}


def set_alias_by_hand(root: Path, model_name: str, version: str, alias: str = CHAMPION) -> None:
    mlflow = tracking.configure(root)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(model_name, alias, str(version))
    client.set_model_version_tag(model_name, str(version), "promotion.decision", f"{alias} (by hand)")


def champion_uri(model_name: str) -> str:
    return f"models:/{model_name}@{CHAMPION}"
