"""train_stage: DeepSpeed on CPU (gloo) for all three stages, and a short learning check."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest
import torch

from clara_pipeline.config import resolve_model_path
from clara_pipeline.model import ClaraModel
from clara_pipeline import train as training
from clara_pipeline.train import _stage_docs, load_deepspeed_config, train_stage

DOCUMENTS = {
    "d0": "Alba Rint was born in 1950 in Corva. She studied botany at the Tessel Institute.",
    "d1": "Corva is a harbour town on the Vell coast, founded in 1312 by salt traders.",
    "d2": "The Tessel Institute is a research school in Marrow, known for its glass library.",
    "d3": "Grey Harbour is a novel by Oren Vask, published in 1987 by Lintel Press.",
    "d4": "Oren Vask was born in 1931 in Marrow and died in 2004 in Corva.",
    "d5": "Lintel Press is a publisher in Marrow that prints poetry and travel books.",
}
QA = [
    ("d0", "Where was Alba Rint born?", "Corva"),
    ("d0", "What did Alba Rint study?", "botany"),
    ("d1", "When was Corva founded?", "1312"),
    ("d2", "Where is the Tessel Institute?", "Marrow"),
    ("d3", "Who wrote Grey Harbour?", "Oren Vask"),
    ("d4", "When was Oren Vask born?", "1931"),
    ("d5", "Where is Lintel Press?", "Marrow"),
]
TINY_GEN = {"vocab_size": 600, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2}
DS_CFG = {"backend": "deepspeed", "deepspeed_config": str(ROOT / "configs" / "deepspeed" / "cpu.json")}
RESUME_STAGE_CFG = {"steps": 10, "batch_size": 4, "lr": 1e-3, "mse_weight": 0.1, "paraphrase_max_length": 24,
                    "log_every": 1}


def train_cfg(backend: str, **extra) -> dict:
    return {**DS_CFG, "backend": backend, "checkpoint_every": 2, "keep_checkpoints": 2, **extra}



def make_model(compressor_path):
    cfg = {"mode": "separate", "compressor_path": compressor_path, "generator_path": None, "doc_max_length": 32,
           "compression_rate": 8, "question_max_length": 16, "answer_max_length": 8, "generator": dict(TINY_GEN),
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    texts = list(DOCUMENTS.values()) + [q + " " + a for _, q, a in QA]
    return ClaraModel.from_params(cfg, corpus_texts=texts, seed=0)


def stage1_records():
    recs = [{"doc_id": d, "question": q, "answer": a, "data_type": "qa"} for d, q, a in QA]
    recs += [{"doc_id": d, "question": "", "answer": t, "data_type": "paraphrase"} for d, t in DOCUMENTS.items()]
    return recs


def retrieval_records():
    ids = list(DOCUMENTS)
    rng = random.Random(0)
    recs = []
    for gold, q, a in QA:
        others = [d for d in ids if d != gold]
        rng.shuffle(others)
        cands = others[:2] + [gold] + others[2:4]  # N = 5, gold somewhere in the middle
        recs.append({"question": q, "answer": a, "gold_doc_ids": [gold], "candidate_doc_ids": cands})
    return recs


def snapshot(model, part):
    return {n: p.detach().clone() for n, p in model.named_parameters() if model._part_of(n) == part}


def changed(before, model):
    params = dict(model.named_parameters())
    return any(not torch.equal(v, params[n].detach()) for n, v in before.items())


def test_deepspeed_config_auto_values_replaced():
    cfg = load_deepspeed_config({"deepspeed_config": str(ROOT / "configs/deepspeed/gpu_zero2_bf16.json")}, 4)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 1
    assert "auto" not in cfg.values()


def test_deepspeed_config_missing_or_broken_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json: no DeepSpeed config .*train\.deepspeed_config"):
        load_deepspeed_config({"deepspeed_config": str(tmp_path / "nope.json")}, 4)
    (tmp_path / "bad.json").write_text("{\"train_micro_batch_size_per_gpu\": ")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON .*line 1"):
        load_deepspeed_config({"deepspeed_config": str(tmp_path / "bad.json")}, 4)


def test_stage2_docs_gold_first_then_negatives():
    rec = {"gold_doc_ids": ["d3"], "candidate_doc_ids": ["d1", "d3", "d2", "d5"]}
    ids = _stage_docs(rec, DOCUMENTS, 3, random.Random(0))
    assert sorted(ids) == ["d1", "d2", "d3"]


def test_deepspeed_all_stages_on_cpu(tiny_bert):
    model = make_model(tiny_bert)
    logged = []
    log = lambda step, metrics: logged.append((step, metrics))  # noqa: E731

    comp, gen = snapshot(model, "compressor"), snapshot(model, "generator")
    s1 = train_stage(model, "stage1", stage1_records(), DOCUMENTS,
                     {"steps": 3, "batch_size": 4, "lr": 1e-3, "mse_weight": 0.1, "paraphrase_max_length": 24},
                     DS_CFG, seed=0, log_fn=log)
    assert s1["steps"] == 3 and math.isfinite(s1["final_loss"]) and s1["trainable_params"] > 0
    assert changed(comp, model) and changed(gen, model)
    assert logged and {"loss", "lm_loss", "mse_loss", "lr", "tokens_per_s"} <= set(logged[0][1])
    params = dict(model.named_parameters())  # query adapter re-initialised from the trained compressor
    for n, p in params.items():
        if "lora_" in n and n.split(".")[-2] == "query":
            assert torch.equal(p, params[n.replace(".query.weight", ".compressor.weight")])

    comp, gen = snapshot(model, "compressor"), snapshot(model, "generator")
    s2 = train_stage(model, "stage2", retrieval_records(), DOCUMENTS,
                     {"steps": 2, "batch_size": 4, "lr": 1e-3, "top_k": 3, "train_compressor": False},
                     DS_CFG, seed=0)
    assert math.isfinite(s2["final_loss"]) and s2["cached_documents"] > 0
    assert changed(gen, model) and not changed(comp, model)

    comp, query, gen = snapshot(model, "compressor"), snapshot(model, "query"), snapshot(model, "generator")
    s3 = train_stage(model, "stage3", retrieval_records(), DOCUMENTS,
                     {"steps": 2, "batch_size": 4, "lr": 1e-3, "top_k": 2, "temperature": 1.0,
                      "freeze_compressor": True},
                     DS_CFG, seed=0)
    assert math.isfinite(s3["final_loss"])
    assert changed(query, model) and changed(gen, model) and not changed(comp, model)


@pytest.mark.parametrize("freeze", [True, False])
def test_stage3_retrieval_term_ranks_gold_documents_higher(tiny_bert, freeze):
    """train.stage3.retrieval_weight > 0: the query reasoner learns to score each question's gold document
    above the rest, against the whole cached index (frozen compressor) or the batch's candidates."""
    def gold_rank_loss(model):
        from clara_pipeline.model import retrieval_loss
        docs = model.compress(list(DOCUMENTS.values()))
        scores = model.score(model.encode_queries([q for _, q, _ in QA]), docs)
        positives = torch.tensor([[d == gold for d in DOCUMENTS] for gold, _, _ in QA])
        return retrieval_loss(scores, positives, 0.05).item()

    model = make_model(tiny_bert)
    model.init_query_from_compressor()
    before = gold_rank_loss(model)
    seen = []
    s3 = train_stage(model, "stage3", retrieval_records(), DOCUMENTS,
                     {"steps": 25, "batch_size": 4, "lr": 1e-2, "top_k": 2, "temperature": 0.02,
                      "freeze_compressor": freeze, "retrieval_weight": 1.0, "retrieval_temperature": 0.05,
                      "log_every": 1},
                     {"backend": "torch"}, seed=0, log_fn=lambda s, m: seen.append(m["retrieval_loss"]))
    assert math.isfinite(s3["final_loss"]) and len(seen) == 25
    after = gold_rank_loss(model)
    assert after < before - 0.5, (before, after)  # answer loss alone moved it 2.33 -> 2.29 (frozen, lr 3e-3)


def test_stage3_query_lr_moves_the_query_reasoner_at_its_own_rate(tiny_bert):
    """train.stage3.query_lr: the query adapter steps at its own rate, the generator at `lr` (Adam's first
    step moves each weight by about its rate)."""
    model = make_model(tiny_bert)
    model.init_query_from_compressor()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_stage(model, "stage3", retrieval_records(), DOCUMENTS,
                {"steps": 1, "batch_size": 4, "lr": 1e-3, "query_lr": 1e-1, "top_k": 2, "freeze_compressor": True,
                 "retrieval_weight": 1.0}, DS_CFG, seed=0)
    moved = {part: max((p - before[n]).abs().max().item() for n, p in model.named_parameters()
                       if model._part_of(n) == part) for part in ("query", "generator", "compressor")}
    assert moved["query"] == pytest.approx(1e-1, rel=0.05)
    assert moved["generator"] == pytest.approx(1e-3, rel=0.05)
    assert moved["compressor"] == 0.0


def test_stage1_loss_goes_down(tiny_bert):
    model = make_model(tiny_bert)
    records = [r for r in stage1_records() if r["data_type"] == "qa"]
    losses = []
    train_stage(model, "stage1", records, DOCUMENTS,
                {"steps": 30, "batch_size": 7, "lr": 3e-3, "mse_weight": 0.1, "log_every": 1},
                {"backend": "torch"}, seed=0, log_fn=lambda s, m: losses.append(m["lm_loss"]))
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < losses[0] - 1.5, losses


def test_mse_term_does_not_collapse_documents():
    """The MSE term pulls memory states towards the document states; it must not let the adapter pull the
    document states along until every document compresses to the same vectors. With the target computed by
    the adapted encoder this setting ends at a relative spread of about 4e-4; with the fixed target, about 1."""
    model = make_model(resolve_model_path("embedded-minilm"))
    train_stage(model, "stage1", stage1_records(), DOCUMENTS,
                {"steps": 40, "batch_size": 6, "lr": 0.005, "mse_weight": 10.0}, {"backend": "torch"}, seed=0)
    vectors = model.compress(list(DOCUMENTS.values())).flatten(1)
    spread = (vectors.std(0).mean() / vectors.abs().mean()).item()
    assert spread > 0.1, f"documents compress alike (relative spread {spread:.2e})"


# ---- checkpoints: kill, resume, same curve ---------------------------------------------------------------


def _start_worker(tiny_bert, backend, ckpt, out, sleep):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # the worker is its own single-process group
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "train_worker.py"), tiny_bert, backend, str(ckpt),
                             str(out), str(sleep)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("backend", ["deepspeed", "torch"])
def test_kill_and_resume_reproduces_the_loss_curve(tiny_bert, tmp_path, backend):
    """SIGKILL a run after its step-4 checkpoint, resume it: the loss curve equals an uninterrupted run's."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "resumed.json"
    worker = _start_worker(tiny_bert, backend, ckpt, out, sleep=0.5)
    deadline = time.time() + 120
    while not ((ckpt / "latest").exists() and (ckpt / "latest").read_text().strip() >= "step-00000004"):
        assert worker.poll() is None, worker.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "no step-4 checkpoint within 120 s"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert not out.exists(), "the worker finished before it was killed: the test would prove nothing"
    killed_at = len(out.with_suffix(".steps").read_text().split())
    assert killed_at < RESUME_STAGE_CFG["steps"]

    worker = _start_worker(tiny_bert, backend, ckpt, out, sleep=0)
    log = worker.communicate(timeout=300)[0].decode()
    assert worker.returncode == 0, log[-3000:]
    resumed = json.loads(out.read_text())
    assert resumed["resumed_from_step"] >= 4

    straight = train_stage(make_model(tiny_bert), "stage1", stage1_records(), DOCUMENTS, dict(RESUME_STAGE_CFG),
                           train_cfg(backend), seed=0, checkpoint_dir=tmp_path / "straight")
    assert straight["resumed_from_step"] is None
    assert len(resumed["losses"]) == len(straight["losses"]) == RESUME_STAGE_CFG["steps"]
    assert resumed["losses"] == straight["losses"]  # exact, step by step
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-00000008", "step-00000010"]  # keep_checkpoints=2


def test_checkpoint_of_another_configuration_is_not_resumed(tiny_bert, tmp_path):
    cfg = dict(RESUME_STAGE_CFG, steps=4)
    first = train_stage(make_model(tiny_bert), "stage1", stage1_records(), DOCUMENTS, cfg, train_cfg("torch"),
                        seed=0, checkpoint_dir=tmp_path)
    assert first["resumed_from_step"] is None and (tmp_path / "latest").read_text() == "step-00000004"
    again = train_stage(make_model(tiny_bert), "stage1", stage1_records(), DOCUMENTS, dict(cfg, lr=5e-4),
                        train_cfg("torch"), seed=0, checkpoint_dir=tmp_path, log=lambda _: None)
    assert again["resumed_from_step"] is None  # a different lr: the old checkpoint is discarded
    same = train_stage(make_model(tiny_bert), "stage1", stage1_records(), DOCUMENTS, dict(cfg, lr=5e-4),
                       train_cfg("torch"), seed=0, checkpoint_dir=tmp_path, log=lambda _: None)
    # the same run again: its final checkpoint is loaded, nothing is retrained
    assert same["resumed_from_step"] == 4 and same["losses"] == again["losses"]


def test_gradient_accumulation_same_in_deepspeed_and_torch(tiny_bert):
    """Two micro-batches per update: DeepSpeed's engine and the plain loop must take the same steps."""
    cfg = dict(RESUME_STAGE_CFG, steps=4, batch_size=2)
    runs = {backend: train_stage(make_model(tiny_bert), "stage1", stage1_records(), DOCUMENTS, cfg,
                                 {**DS_CFG, "backend": backend, "gradient_accumulation_steps": 2}, seed=0)
            for backend in ("deepspeed", "torch")}
    assert runs["deepspeed"]["gradient_accumulation_steps"] == 2
    assert runs["deepspeed"]["losses"] == pytest.approx(runs["torch"]["losses"], rel=1e-5)
    one = train_stage(make_model(tiny_bert), "stage1", stage1_records(), DOCUMENTS, cfg,
                      {**DS_CFG, "backend": "torch"}, seed=0)
    assert one["losses"][0] != runs["torch"]["losses"][0]  # first update saw a different (smaller) batch


def test_two_processes_under_torchrun_share_one_model(tiny_bert, tmp_path):
    """The launcher path on CPU (gloo): each rank trains on its own slice, gradients are all-reduced,
    both ranks end with the same weights, only rank 0 logs, and the checkpoint is written once."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT)
    torchrun = Path(sys.executable).with_name("torchrun")
    from clara_pipeline.train import _free_port

    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()),
                           str(ROOT / "tests" / "dist_worker.py"), tiny_bert, str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["weights"] == ranks[1]["weights"]  # one model, trained together
    assert ranks[0]["losses"] != ranks[1]["losses"]  # on different rows of the global batch
    assert ranks[0]["logged"] == [0, 1, 2] and ranks[1]["logged"] == []
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step-00000003"


def test_reconstruction_target_form_asks_for_each_document_once():
    docs = {"a": "Ann Berg is a painter.", "b": "Vell is a river."}
    records = [{"doc_id": "a"}, {"doc_id": "b"}, {"doc_id": "a"}]
    rows = training.stage1_examples(records, docs, {"target_form": "reconstruction"}, 8, 32, seed=0)
    assert [(r["document"], r["answer"]) for r in rows] == [(docs["a"], docs["a"]), (docs["b"], docs["b"])]
    assert {r["question"] for r in rows} == {training.RECONSTRUCT_INSTRUCTION} and {r["max_length"] for r in rows} == {32}
    with pytest.raises(ValueError, match="target_form must be"):
        training.stage1_examples(records, docs, {"target_form": "copy"}, 8, 32, seed=0)


def test_stage2_reconstruction_rehearsal_rides_along(tiny_bert):
    """reconstruction_weight > 0: every stage-2 batch also asks for documents word for word, and that loss falls."""
    model = make_model(tiny_bert)
    logged = []
    cfg = {"steps": 12, "batch_size": 4, "lr": 3e-3, "top_k": 2, "train_compressor": False, "log_every": 1,
           "reconstruction_weight": 1.0, "reconstruction_batch_size": 3}
    summary = train_stage(model, "stage2", retrieval_records(), DOCUMENTS, cfg, {"backend": "torch"}, seed=0,
                          log_fn=lambda s, m: logged.append(m), reconstruction_documents=DOCUMENTS)
    assert summary["reconstruction_records"] == len(DOCUMENTS) and len(logged) == 12
    rec = [m["reconstruction_loss"] for m in logged]
    assert sum(rec[-3:]) / 3 < rec[0] - 0.5, rec
    plain = train_stage(make_model(tiny_bert), "stage2", retrieval_records(), DOCUMENTS,
                        {**cfg, "reconstruction_weight": 0.0, "steps": 1}, {"backend": "torch"}, seed=0,
                        log_fn=lambda s, m: logged.append(m))
    assert plain["reconstruction_records"] == 0 and "reconstruction_loss" not in logged[-1]
    with pytest.raises(ValueError, match="needs documents to reconstruct"):
        train_stage(model, "stage2", retrieval_records(), DOCUMENTS, cfg, {"backend": "torch"}, seed=0)
