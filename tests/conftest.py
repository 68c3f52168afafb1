"""Shared fixtures: a tiny but complete configuration of the real pipeline."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

for _var, _value in (("DAGSTER_DISABLE_TELEMETRY", "1"), ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"),
                     ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _value)
# Tests must never write to the project's own tracking store.
os.environ.pop("MLFLOW_TRACKING_URI", None)


def tiny_params() -> dict:
    """params.yaml shrunk so the whole lineage trains in about a minute on 2 cores (same code paths)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["corpus"].update(num_people=16, num_places=8, num_organisations=8, num_works=12,
                            num_train_questions=48, num_eval_questions=16)
    params["scp"].update(max_qa_per_doc=3, candidates=6)
    # the default's SmolLM2 generator would cost minutes: a tiny from-scratch Llama takes the same code paths
    params["model"].update(doc_max_length=32, compression_rate=8, question_max_length=24, answer_max_length=8,
                           generator_path=None, prompt="plain")  # a from-scratch tokenizer has no chat template
    params["model"]["generator"].update(vocab_size=600, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=2)
    params["model"]["lora"].update(r=4, alpha=8)
    params["train"]["deepspeed_config"] = str(ROOT / "configs" / "deepspeed" / "cpu.json")
    for stage in ("stage1", "stage2", "stage3"):
        params["train"][stage].update(steps=6, batch_size=4)
    params["train"]["stage1"].update(paraphrase_max_length=24, qa_max_length=32)
    params["train"]["stage2"]["top_k"] = 2
    params["train"]["stage3"]["top_k"] = 2
    params["benchmark"].update(top_k=2, recall_ks=[1, 2, 5], max_new_tokens=6, batch_size=8)
    # an untrained tiny model loses to any baseline; the tests of serving and re-indexing need a champion
    # (the baseline gate is tested in test_registry.py and test_pipeline.py)
    params["registry"]["baselines"] = []
    return params


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    """An empty project root holding the tiny params.yaml."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A random 2-layer BERT with the MiniLM tokenizer: same code path as MiniLM, a fraction of the cost."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from clara_pipeline.config import resolve_model_path

    out = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded-minilm"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@dataclass
class LineageRun:
    """What one run of the main job did: its exit, its terminal output, and the events Dagster recorded."""

    success: bool
    printed: str
    materialised: set[str]  # asset keys
    checks: dict[str, bool]  # asset check name -> passed


def run_main_job(root: Path) -> LineageRun:
    """`make run`'s command (python -m assets) on project ``root``, with an instance of its own in root/dagster_home
    (make run's dagster.yaml); the events are read back from that instance, as the Dagster UI would show them."""
    import dagster as dg

    home = root / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)  # the instance make run uses (telemetry off)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_DISABLE_TELEMETRY", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK",
                        "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
                        # this process may hold a gloo group on MASTER_PORT already (the DeepSpeed stages ran)
                        "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(CLARA_ROOT=str(root), DAGSTER_HOME=str(home))
    out = subprocess.run([sys.executable, "-m", "assets"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    materialised, checks = set(), {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is None:
                    continue
                if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                    materialised.add(event.asset_key.to_user_string())
                elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
                    evaluation = event.asset_check_evaluation_data
                    checks[evaluation.check_name] = evaluation.passed
    return LineageRun(out.returncode == 0, out.stdout + out.stderr, materialised, checks)


@pytest.fixture(scope="session")
def tiny_lineage(tmp_path_factory) -> tuple[Path, LineageRun]:
    """The whole tiny lineage (six assets + both checks) materialised once by the main job, as `make run` does.

    Shared by every module that needs trained artifacts and a registered champion (version 1); a test
    that changes the project works on a copy (shutil.copytree) so the others see it as built."""
    root = tmp_path_factory.mktemp("lineage")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    return root, run_main_job(root)
