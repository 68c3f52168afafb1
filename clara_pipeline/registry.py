"""The MLflow model registry: register the joint model, and move aliases only on benchmark evidence.

Aliases, not stages (stages are deprecated): ``champion`` is what `clara ask` and serving use;
``challenger`` is the newest model that did not earn it. A model becomes champion only when it beats the
configured baselines of its own report (``registry.baselines``, default closed-book and BM25 + text) and
the current champion, on ``registry.metric``: a model that loses to BM25 + text is never served. Every decision is written as tags on the version
(``benchmark.<metric>``, ``eval_fingerprint``, ``promotion.decision``, ``promotion.reason``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from pathlib import Path

from clara_pipeline import tracking

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


def register(stage_run, model_name: str, model_dir: Path, index_dir: Path) -> str:
    """Log the joint model + index as a pyfunc in the current run and register it; returns the version.

    Logged as a model from code (``clara_pipeline/serving_model.py``, nothing pickled), with a signature:
    a ``question`` column in, ``question``/``answer``/``documents`` out, params ``k`` and ``max_new_tokens``."""
    import mlflow

    from clara_pipeline import serving

    with warnings.catch_warnings():
        # the signature above is explicit, so MLflow's advice to add an input example (which it would run
        # through the model at logging time, a second model load) is noise on every run
        warnings.filterwarnings("ignore", message=".*input example was not provided.*", category=UserWarning)
        # MLflow prints "Successfully registered model ..." / "Created version ..." to stderr; the stage
        # logs its own line with the version, so those go to this module's DEBUG log instead
        printed = io.StringIO()
        try:
            with contextlib.redirect_stderr(printed):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(serving.MODEL_CODE),
                    artifacts={"model": str(model_dir), "index": str(index_dir)},
                    signature=serving.SIGNATURE,
                    pip_requirements=["clara-pipeline", "torch", "transformers", "peft", "faiss-cpu", "mlflow"],
                    registered_model_name=model_name,
                )
        except BaseException:
            sys.stderr.write(printed.getvalue())  # whatever MLflow said before failing is the user's to read
            raise
        log.debug("mlflow: %s", printed.getvalue().strip())
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_model_version_tag(model_name, version, "run_id", stage_run.run_id)
    return version


def champion(client, model_name: str):
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except Exception:  # no alias yet (MlflowException RESOURCE_DOES_NOT_EXIST)
        return None


def decide(candidate: dict, current: dict | None, metric: str, baselines: dict[str, float] | None = None) -> tuple[str, str]:
    """Pure decision rule, so it is testable without MLflow. candidate/current: {version, score,
    eval_fingerprint}; baselines: {system: score} of the candidate's own report, which it must beat."""
    beaten_by = {name: score for name, score in (baselines or {}).items() if not candidate["score"] > score}
    if beaten_by:
        worst = ", ".join(f"{name} {score:.4f}" for name, score in beaten_by.items())
        return CHALLENGER, (f"{metric} {candidate['score']:.4f} does not beat the baseline(s) of the same report "
                            f"({worst}); a model that loses to them is never champion")
    if current is None:
        return CHAMPION, (f"no champion yet, and {metric} {candidate['score']:.4f} beats the baselines "
                          f"({', '.join(sorted(baselines or {})) or 'none configured'})")
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


def promote(root: Path, model_name: str, version: str, headline: dict, metric: str, eval_fp: str,
            baselines: dict[str, float] | None = None) -> dict:
    """Record the benchmark on the version and set ``champion`` or ``challenger``. Returns the decision.

    baselines: {system: score on `metric`} from the same report, each of which the model must beat."""
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
    alias, reason = decide(candidate, current, metric, baselines)
    client.set_registered_model_alias(model_name, alias, version)
    if alias == CHALLENGER and current is not None and current["version"] == str(version):
        # the champion, benchmarked again, now loses to a baseline: it is served no more
        client.delete_registered_model_alias(model_name, CHAMPION)
    client.set_model_version_tag(model_name, version, "promotion.decision", alias)
    client.set_model_version_tag(model_name, version, "promotion.reason", reason)
    return {"model_name": model_name, "version": str(version), "alias": alias, "reason": reason,
            "metric": metric, "score": candidate["score"], "baselines": dict(baselines or {}),
            "previous_champion": current["version"] if current else None}


def set_alias_by_hand(root: Path, model_name: str, version: str, alias: str = CHAMPION) -> None:
    mlflow = tracking.configure(root)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(model_name, alias, str(version))
    client.set_model_version_tag(model_name, str(version), "promotion.decision", f"{alias} (by hand)")


def champion_uri(model_name: str) -> str:
    return f"models:/{model_name}@{CHAMPION}"
