"""End to end on a tiny configuration: the whole lineage as the main job (`make run`'s command) runs it, and
single stages materialised in process; tracked in MLflow, registered, gated, served."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.checks import benchmark_is_complete, promotion_gate
from assets.lineage import LINEAGE_ASSETS
from assets.resources import ClaraProject
from clara_pipeline import tracking
from tests.conftest import ROOT, tiny_params

STAGES = ["raw_corpus", "scp_data", "compressor_checkpoint", "compressed_index", "clara_model", "benchmark_report"]


@pytest.fixture(scope="module")
def materialised(tiny_lineage):
    return tiny_lineage


def test_all_assets_materialise(materialised):
    root, run = materialised
    assert run.success, run.printed[-4000:]
    assert run.materialised == set(STAGES)
    for stage in STAGES:
        assert (root / "artifacts" / stage / "summary.json").is_file(), stage
    checks = run.checks
    assert checks["benchmark_is_complete"] is True
    assert checks["promotion_gate"] is True  # no baselines in the tiny params: the first model becomes champion


def test_report_has_every_system_with_finite_figures(materialised):
    root, _ = materialised
    metrics = json.loads((root / "artifacts" / "benchmark_report" / "metrics.json").read_text())
    from clara_pipeline.benchmark import QA_SYSTEMS

    assert set(metrics["qa"]) == set(QA_SYSTEMS) and {"bm25_text", "oracle_text", "oracle_compressed"} <= set(QA_SYSTEMS)
    assert set(metrics["retrieval"]) == {"bm25", "dense", "clara", "clara_rerank", "clara_stage2", "clara_stage2_rerank"}
    for section in ("qa", "retrieval"):
        for system, values in metrics[section].items():
            assert all(math.isfinite(v) and 0 <= v <= 1 for v in values.values()), (section, system, values)
    # BM25 over a fictional encyclopedia finds the gold document for most questions naming an entity.
    assert metrics["retrieval"]["bm25"]["recall@5"] > 0.3
    report = (root / "artifacts" / "benchmark_report" / "report.md").read_text()
    for system in ("closed_book", "bm25_compressed", "clara", "oracle_compressed", "dense"):
        assert system in report
    assert (root / "artifacts" / "benchmark_report" / "recall_at_k.png").stat().st_size > 1000


def test_mlflow_has_one_run_per_training_and_benchmark_stage(materialised):
    root, _ = materialised
    mlflow = tracking.configure(root)
    assert (root / "mlflow" / "mlflow.db").is_file()
    runs = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], output_format="list")
    by_stage = {r.data.tags["stage"]: r for r in runs}
    for stage in ("compressor_checkpoint", "compressed_index", "clara_model", "benchmark_report"):
        assert stage in by_stage, stage
    client = mlflow.MlflowClient()
    history = client.get_metric_history(by_stage["compressor_checkpoint"].info.run_id, "stage1.loss")
    assert len(history) >= 2, "per-step training metrics must be logged"
    assert "clara.f1" in by_stage["benchmark_report"].data.metrics
    assert by_stage["compressor_checkpoint"].data.params["model.compression_rate"] == "8"


def test_registered_model_gets_champion_then_gate_decides(materialised, tmp_path):
    root = tmp_path / "project"  # a copy: this test registers a second version, other modules share the lineage
    shutil.copytree(materialised[0], root)
    mlflow = tracking.configure(root)
    client = mlflow.MlflowClient()
    name = tiny_params()["registry"]["model_name"]
    v1 = client.get_model_version_by_alias(name, "champion")
    assert str(v1.version) == "1"
    assert v1.tags["promotion.decision"] == "champion"

    # A second joint model, trained with another seed, is benchmarked and gated against version 1.
    params = tiny_params()
    params["seed"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    selection = [a for a in LINEAGE_ASSETS if a.key.to_user_string() in ("clara_model", "benchmark_report")]
    result = dg.materialize(selection, resources={"clara": ClaraProject(root=str(root))},
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    v2 = client.get_model_version(name, "2")
    metric = params["registry"]["metric"]
    score_v1, score_v2 = float(v1.tags[f"benchmark.{metric}"]), float(v2.tags[f"benchmark.{metric}"])
    champion = client.get_model_version_by_alias(name, "champion")
    if score_v2 > score_v1:
        assert str(champion.version) == "2" and v2.tags["promotion.decision"] == "champion"
    else:
        assert str(champion.version) == "1"
        assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
        assert "does not beat" in v2.tags["promotion.reason"]
    promotion = json.loads((root / "artifacts" / "benchmark_report" / "promotion.json").read_text())
    assert promotion["version"] == "2" and promotion["previous_champion"] == "1"


def test_champion_that_loses_to_a_baseline_is_served_no_more(materialised, tmp_path):
    """The gate through MLflow: version 1 is champion; benchmarked again against a baseline it does not beat,
    it becomes challenger and the champion alias is removed, so nothing that loses to BM25 + text is served."""
    from clara_pipeline import registry

    root = tmp_path / "project"
    shutil.copytree(materialised[0], root)
    client = tracking.configure(root).MlflowClient()
    name = tiny_params()["registry"]["model_name"]
    v1 = client.get_model_version_by_alias(name, "champion")
    fp = v1.tags["eval_fingerprint"]
    decision = registry.promote(root, name, "1", {"f1": 0.2, "em": 0.1}, "f1", fp, {"bm25_text": 0.3})
    assert decision["alias"] == "challenger" and "bm25_text 0.3000" in decision["reason"]
    assert registry.champion(client, name) is None
    assert client.get_model_version(name, "1").tags["promotion.decision"] == "challenger"
    decision = registry.promote(root, name, "1", {"f1": 0.4, "em": 0.1}, "f1", fp, {"bm25_text": 0.3})
    assert decision["alias"] == "champion" and str(registry.champion(client, name).version) == "1"


def test_champion_serves_questions_through_pyfunc(materialised):
    root, _ = materialised
    import pandas as pd

    mlflow = tracking.configure(root)
    name = tiny_params()["registry"]["model_name"]
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out = model.predict(pd.DataFrame({"question": ["Who created the first work?", "Where was it founded?"]}))
    assert list(out.columns) == ["question", "answer", "documents"]
    docs = out["documents"][0]
    assert len(docs) == 5 and all("title" in d and "score" in d for d in docs)
    with pytest.raises(ValueError, match="k must be"):
        model.unwrap_python_model().rag.ask(["a question"], k=0)


def test_cli_ask_prints_answer_and_retrieved_titles(materialised, monkeypatch, capsys):
    root, _ = materialised
    from clara_pipeline import cli

    monkeypatch.setenv("CLARA_ROOT", str(root))
    assert cli.main(["ask", "Who created the first work?", "--k", "2", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model"].endswith("@champion") and len(answer["documents"]) == 2
    assert cli.main(["ask", "x" * 2000]) == 2
    assert "limit" in capsys.readouterr().err


def test_bad_params_file_is_named(tmp_path):
    from clara_pipeline.config import load_params

    (tmp_path / "params.yaml").write_text("seed: 0\ncorpus: {}\n")
    with pytest.raises(ValueError, match=r"params.yaml: missing top-level key\(s\) scp"):
        load_params(tmp_path / "params.yaml")


def test_stage_without_its_inputs_names_what_to_run_first(tiny_project):
    from clara_pipeline.config import Paths, load_params
    from clara_pipeline.stages import run_stage

    with pytest.raises(FileNotFoundError, match="run that stage first"):
        run_stage("compressed_index", load_params(tiny_project / "params.yaml"), Paths(tiny_project))


def test_malformed_corpus_line_names_file_and_line(tiny_project):
    from clara_pipeline.config import Paths, load_params
    from clara_pipeline.stages import run_stage

    params = load_params(tiny_project / "params.yaml")
    run_stage("raw_corpus", params, Paths(tiny_project))
    docs = tiny_project / "artifacts" / "raw_corpus" / "documents.jsonl"
    lines = docs.read_text().splitlines()
    lines[4] = lines[4][:20]  # a truncated record
    docs.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"documents.jsonl:5"):
        run_stage("scp_data", params, Paths(tiny_project))
    assert not (tiny_project / "artifacts" / "scp_data" / "stage1.jsonl").exists()


def test_imported_corpus_flows_into_scp_data(tiny_project):
    """corpus.source other than 'embedded': the importer feeds raw_corpus, a bad line is reported by file and
    line and kept out, and scp_data builds stage-1 records and candidate lists from what was kept."""
    from clara_pipeline.config import Paths, load_params
    from clara_pipeline.stages import run_stage

    docs = [{"id": f"s{i}", "title": f"Place {i}", "text": f"Place {i} was founded in {1200 + i} by the river "
             f"Vell. Its mayor is Ann Berg {i}. The town has {i + 3} bridges."} for i in range(12)]
    lines = [json.dumps(d) for d in docs]
    lines.insert(3, '{"id": "broken", "text": ')  # line 4 is malformed JSON
    (tiny_project / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    params = load_params(tiny_project / "params.yaml")
    params["corpus"] = {"source": "jsonl", "path": "corpus.jsonl"}
    paths = Paths(tiny_project)
    summary = run_stage("raw_corpus", params, paths)
    assert summary["source"] == "jsonl" and summary["rejected_by_reason"] == {"malformed_json": 1}
    rejected = [json.loads(x) for x in (paths.raw_corpus / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1 and rejected[0]["line"] == 4 and rejected[0]["file"].endswith("corpus.jsonl")
    assert len((paths.raw_corpus / "documents.jsonl").read_text().splitlines()) == 12
    scp = run_stage("scp_data", params, paths)
    assert scp["stage1"]["docs"] == 12 and scp["stage1"]["qa"] > 0
    # a plain corpus has no questions: the synthesised QA pairs become stage-2/3 questions
    assert scp["candidates"]["synthetic_questions"] == scp["stage1"]["qa"] == scp["candidates"]["questions"]
    stage2 = [json.loads(x) for x in (paths.scp_data / "stage2.jsonl").read_text().splitlines()]
    assert all(set(r["gold_doc_ids"]) <= set(r["candidate_doc_ids"]) for r in stage2)


def test_reindex_compresses_only_what_changed(materialised, tmp_path):
    """compressed_index again after a corpus edit: one added, one edited, one deleted document; only two
    documents are compressed and the new version is what the index now serves."""
    from clara_pipeline.config import Paths, load_params
    from clara_pipeline.index import CompressedIndex
    from clara_pipeline.jsonl import read_jsonl, write_jsonl
    from clara_pipeline.stages import run_stage

    root, _ = materialised
    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    paths = Paths(copy)
    params = load_params(copy / "params.yaml")
    first = json.loads((paths.compressed_index / "summary.json").read_text())
    assert first["update"]["full_rebuild"] == 1 and first["update"]["compressed"] == first["count"]

    docs = read_jsonl(paths.raw_corpus / "documents.jsonl")
    removed = docs.pop(0)
    docs[0] = {**docs[0], "text": docs[0]["text"] + " It also has a lighthouse."}
    docs.append({"id": "doc-new", "title": "Nova", "text": "Nova is a new town founded in 2024."})
    write_jsonl(paths.raw_corpus / "documents.jsonl", docs)
    again = run_stage("compressed_index", params, paths)
    assert again["update"] == {"added": 1, "updated": 1, "removed": 1, "unchanged": len(docs) - 2,
                               "compressed": 2, "full_rebuild": 0}
    index = CompressedIndex.load(paths.compressed_index)
    assert [d["id"] for d in index.documents] == [d["id"] for d in docs] and removed["id"] not in index.row_of


def test_corpus_with_its_own_stage1_data_trains_on_it(tiny_project):
    """corpus.source clara_stage1: scp_data uses the shipped QA pairs (training split only), not a synthesizer."""
    from clara_pipeline.config import Paths, load_params
    from clara_pipeline.stages import run_stage

    rows = [{"data_type": "qa", "question": [f"When was Town {i} founded?", f"Who leads Town {i}?"],
             "answers": [str(1500 + i), f"Mayor {i}"],
             "docs": [f"Town {i} was founded in {1500 + i}. It is led by Mayor {i}."]} for i in range(10)]
    (tiny_project / "stage1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = load_params(tiny_project / "params.yaml")
    params["corpus"] = {"source": "clara_stage1", "path": "stage1.jsonl", "eval_fraction": 0.2, "seed": 0}
    paths = Paths(tiny_project)
    run_stage("raw_corpus", params, paths)
    scp = run_stage("scp_data", params, paths)
    assert scp["synthesizer"] == "corpus" and scp["stage1"]["qa"] == 16  # 20 pairs, 4 held out for evaluation
    held_out = {q["question"] for q in map(json.loads, (paths.raw_corpus / "questions_eval.jsonl").read_text().splitlines())}
    trained = {r["question"] for r in map(json.loads, (paths.scp_data / "stage1.jsonl").read_text().splitlines())}
    assert len(held_out) == 4 and not held_out & trained


def test_main_job_prints_progress_and_the_headline_not_library_noise(materialised):
    """`make run`'s command (the tiny lineage's run): stage progress and the headline table, no library warnings,
    progress bars or registry chatter (the full report stays in the file)."""
    _, run = materialised
    printed = run.printed
    assert run.success, printed[-4000:]
    assert "compressor_checkpoint: done" in printed and "QA F1/sub-EM" in printed and "registry: clara version 1" in printed
    noise = [line for line in printed.splitlines() if " - dagster - INFO - " not in line and any(
        mark in line for mark in ("Warning", "WARNING", "it/s]", "Downloading", "Successfully registered",
                                  "Created version", "Telemetry", "Loading weights"))]
    assert not noise, "\n".join(noise[:20])


def test_pretraining_documents_flow_into_compressor_checkpoint(tiny_project):
    """scp.pretraining_documents writes a second encyclopedia none of whose documents is the corpus's, and
    train.pretrain trains on them before stage 1 (reconstruction, or their SCP rows); asked for without
    documents, the stage says which setting to change before it trains anything."""
    from clara_pipeline.config import Paths, load_params
    from clara_pipeline.jsonl import read_jsonl
    from clara_pipeline.stages import run_stage

    params = load_params(tiny_project / "params.yaml")
    params["train"]["pretrain"].update(steps=2, batch_size=4)
    params["train"]["backend"] = "torch"
    paths = Paths(tiny_project)
    run_stage("raw_corpus", params, paths)
    run_stage("scp_data", params, paths)  # scp.pretraining_documents: 0, as shipped
    with pytest.raises(ValueError, match=r"pretraining.jsonl holds no documents: set scp.pretraining_documents"):
        run_stage("compressor_checkpoint", params, paths)
    assert not paths.compressor_checkpoint.exists()

    params["scp"]["pretraining_documents"] = 30
    params["train"]["stage2"].update(reconstruction_weight=0.5, reconstruction_batch_size=2)
    written = run_stage("scp_data", params, paths)["pretraining_documents"]
    corpus = read_jsonl(paths.raw_corpus / "documents.jsonl")
    pretraining = read_jsonl(paths.scp_data / "pretraining.jsonl")
    assert 24 <= written == len(pretraining) <= 30  # "about N": the kinds' mix is rounded down
    assert not {d["title"] for d in pretraining} & {d["title"] for d in corpus}
    assert not {d["text"] for d in pretraining} & {d["text"] for d in corpus}
    summary = run_stage("compressor_checkpoint", params, paths)
    assert summary["pretrain"]["steps"] == 2 and summary["pretrain"]["records"] == written
    assert summary["stage1"]["fingerprint"] != summary["pretrain"]["fingerprint"]
    assert summary["stage2"]["reconstruction_records"] == written  # stage 2 rehearses the pretraining documents

    # stage 1 can be left out (the quality profile does): stage 2 then follows the pretraining directly; and
    # scp.pretraining_targets: scp pretrains on the synthesizer's QA pairs and paraphrases of the pretraining
    # documents, in the official form, plus one reconstruction row per document
    params["train"]["stage1"]["steps"] = 0
    params["scp"]["pretraining_targets"] = "scp"
    assert run_stage("scp_data", params, paths)["pretraining_scp_records"] > written
    rows = read_jsonl(paths.scp_data / "pretraining_scp.jsonl")
    assert {r["doc_id"] for r in rows} <= {d["id"] for d in pretraining}
    assert {r["data_type"] for r in rows} == {"qa", "paraphrase"}
    summary = run_stage("compressor_checkpoint", params, paths)
    assert "stage1" not in summary and summary["stage2"]["steps"] == params["train"]["stage2"]["steps"]
    with_qa = {r["doc_id"] for r in rows if r["data_type"] == "qa"}
    paraphrases = sum(r["data_type"] == "paraphrase" for r in rows)
    assert summary["pretrain"]["records"] == len(with_qa) + paraphrases + written

    # back to reconstruction leaves no SCP rows behind; a wrong value is named before anything is rewritten
    params["scp"]["pretraining_targets"] = "reconstruction"
    assert run_stage("scp_data", params, paths)["pretraining_scp_records"] == 0
    assert read_jsonl(paths.scp_data / "pretraining_scp.jsonl") == []
    params["scp"]["pretraining_targets"] = "qa"
    with pytest.raises(ValueError, match=r"scp.pretraining_targets must be 'reconstruction' or 'scp', got 'qa'"):
        run_stage("scp_data", params, paths)
    assert len(read_jsonl(paths.scp_data / "pretraining.jsonl")) == written


def test_pretraining_source_file_is_checked(tiny_project):
    from clara_pipeline.config import Paths, load_params
    from clara_pipeline.stages import run_stage

    params = load_params(tiny_project / "params.yaml")
    paths = Paths(tiny_project)
    run_stage("raw_corpus", params, paths)
    params["scp"]["pretraining_source"] = str(tiny_project / "wiki.jsonl")
    with pytest.raises(FileNotFoundError, match=r"scp.pretraining_source: .*wiki.jsonl does not exist"):
        run_stage("scp_data", params, paths)
    (tiny_project / "wiki.jsonl").write_text('{"id": "w1", "text": "Vell is a river."}\n{"id": "w2"}\n')
    with pytest.raises(ValueError, match=r'wiki.jsonl: record 2 has no "text"'):
        run_stage("scp_data", params, paths)
    (tiny_project / "wiki.jsonl").write_text('{"id": "w1", "text": "Vell is a river."}\n')
    assert run_stage("scp_data", params, paths)["pretraining_documents"] == 1
