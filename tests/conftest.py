"""Shared fixtures: a tiny but complete configuration of the real pipeline."""

from __future__ import annotations

import copy
import os
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


@pytest.fixture(scope="session")
def tiny_lineage(tmp_path_factory):
    """The whole tiny lineage (six assets + both checks) materialised once by Dagster, in process.

    Shared by every module that needs trained artifacts and a registered champion (version 1); a test
    that changes the project works on a copy (shutil.copytree) so the others see it as built."""
    import dagster as dg

    from assets.checks import benchmark_is_complete, promotion_gate
    from assets.lineage import LINEAGE_ASSETS
    from assets.resources import ClaraProject

    root = tmp_path_factory.mktemp("lineage")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    result = dg.materialize(LINEAGE_ASSETS + [benchmark_is_complete, promotion_gate],
                            resources={"clara": ClaraProject(root=str(root))},
                            instance=dg.DagsterInstance.ephemeral())
    return root, result
