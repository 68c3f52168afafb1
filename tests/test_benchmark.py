"""The benchmark on a tiny untrained model: every system on the same questions, passage-level retrieval
for chunked corpora, the efficiency columns, and every report file (no training: seconds, not minutes)."""

from __future__ import annotations

import json
import math

import pytest

from clara_pipeline.benchmark import (COMPRESSED_SYSTEMS, PLOT_FILES, QA_SYSTEMS, REPORT_FILES, TEXT_SYSTEMS,
                                      _distinct, run_benchmark, write_report)
from clara_pipeline.metrics import QA_METRICS
from tests.conftest import tiny_params

PLACES = ["Vell", "Oram", "Tusk", "Brae", "Kiln", "Morrow"]


def _corpus():
    docs = []
    for i, place in enumerate(PLACES):
        docs.append({"id": f"d{i}", "title": place, "text": f"{place} is a town founded in {1200 + i} on the river "
                     f"{place}wash. Its mayor is Ann {place}son."})
    # one passage chunked in two: the founder is named only in the second chunk
    docs.append({"id": "p-c0", "parent_id": "p", "chunk": 0, "title": "Quillon",
                 "text": "Quillon is a harbour city with grey walls and a lighthouse."})
    docs.append({"id": "p-c1", "parent_id": "p", "chunk": 1, "title": "Quillon",
                 "text": "Quillon was founded by Zarathine Obb after the long winter."})
    questions = [{"id": f"q{i}", "question": f"When was {place} founded?", "answers": [str(1200 + i)],
                  "gold_doc_ids": [f"d{i}"], "type": "single_hop" if i % 2 else "bridge"}
                 for i, place in enumerate(PLACES)]
    questions.append({"id": "qz", "question": "Who founded it, Zarathine Obb?", "answers": ["Zarathine Obb"],
                      "gold_doc_ids": ["p-c0", "p-c1"], "type": "single_hop"})
    return docs, questions


@pytest.fixture(scope="module")
def benchmarked(tiny_bert, tmp_path_factory):
    from clara_pipeline.index import build_index
    from clara_pipeline.inference import ClaraRAG
    from clara_pipeline.model import ClaraModel

    docs, questions = _corpus()
    cfg = tiny_params()["model"]
    cfg["compressor_path"] = tiny_bert
    model = ClaraModel.from_params(cfg, corpus_texts=[d["text"] for d in docs] + [q["question"] for q in questions])
    out = tmp_path_factory.mktemp("bench")
    build_index(model, docs, out / "index", batch_size=8)
    from clara_pipeline.index import CompressedIndex

    rag = ClaraRAG(model, CompressedIndex.load(out / "index"))
    bench_cfg = {"top_k": 2, "recall_ks": [1, 2, 5], "max_new_tokens": 3, "batch_size": 4, "latency_questions": 3}
    # the same model as its own "before stage 3": the clara_stage2* rows must then equal the clara rows
    results = run_benchmark(rag, docs, questions, bench_cfg, dense_model_path=tiny_bert, log=lambda m: None,
                            num_candidates=4, stage2=rag)
    metrics = write_report(results, out / "report", settings={"note": "tiny"})
    return results, metrics, out / "report", model


def test_every_system_answers_the_same_questions_with_every_metric(benchmarked):
    results, metrics, _, _ = benchmarked
    assert list(results["qa"]) == list(QA_SYSTEMS)
    assert set(results["retrieval"]) == {"bm25", "dense", "clara", "clara_rerank", "clara_stage2", "clara_stage2_rerank"}
    assert results["retrieval"]["clara_stage2"] == results["retrieval"]["clara"]
    assert results["retrieval"]["clara_stage2_rerank"] == results["retrieval"]["clara_rerank"]
    assert results["settings"]["inference dtype"] == "float32"
    for system, values in metrics["qa"].items():
        assert set(values) == set(QA_METRICS)
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in values.values()), system
    # per type, with counts adding up
    for system, by_type in results["qa"].items():
        assert by_type["all"]["count"] == 7
        assert by_type["bridge"]["count"] + by_type["single_hop"]["count"] == 7
    assert set(metrics["qa_by_type"]["clara"]) == {"bridge", "single_hop"}
    row = results["per_question"][0]
    assert all(f"pred_{s}" in row for s in QA_SYSTEMS)


def test_chunked_gold_is_scored_per_passage(benchmarked):
    results, _, _, _ = benchmarked
    assert results["passage_level_retrieval"] is True
    assert _distinct(["p-c1", "p-c0", "d1"], {"p-c0": "p", "p-c1": "p"}) == ["p", "d1"]
    # BM25 puts p-c1 first for "Zarathine Obb": one passage, found at rank 1 -> Recall@1 = 1, not 1/2
    zq = [r for r in results["per_question"] if r["id"] == "qz"][0]
    assert zq["retrieved_bm25"][0] == "p-c1"
    bm25 = results["retrieval"]["bm25"]["all"]
    assert 0 < bm25["recall@1"] <= 1 and bm25["recall@5"] == 1.0


def test_efficiency_columns(benchmarked):
    results, _, _, model = benchmarked
    eff = results["efficiency_by_system"]
    assert set(eff) == set(QA_SYSTEMS)
    for system in COMPRESSED_SYSTEMS:
        assert eff[system]["context_positions_mean"] == 2 * model.n_mem
        assert eff[system]["compression_rate"] == pytest.approx(eff[system]["raw_text_positions_mean"] / (2 * model.n_mem))
        assert eff[system]["bytes_per_document"] == results["efficiency"]["index_bytes_per_document"] > 0
    for system in TEXT_SYSTEMS:
        assert eff[system]["compression_rate"] == 1.0
        assert 0 < eff[system]["context_positions_mean"] <= 2 * model.doc_max_length
    assert eff["closed_book"]["context_positions_mean"] == 0
    assert eff["dense_text"]["bytes_per_document"] > eff["bm25_text"]["bytes_per_document"]
    for system in QA_SYSTEMS:
        assert eff[system]["latency_questions"] == 3
        assert 0 < eff[system]["ttft_ms"] and 0 < eff[system]["latency_ms"]
    assert results["efficiency"]["compression_rate"] == 8


def test_report_files(benchmarked):
    results, metrics, out, _ = benchmarked
    for name in REPORT_FILES + PLOT_FILES + ("metrics.json",):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in (n for n in REPORT_FILES if n.endswith(".png")):
        assert (out / png).stat().st_size > 1000, png
    # strict JSON for DVC: no NaN (closed book has no compression rate -> null)
    strict = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics"))
    assert strict["efficiency_by_system"]["closed_book"]["compression_rate"] is None
    points = json.loads((out / "quality_vs_compression.json").read_text())
    assert {p["system"] for p in points} == set(TEXT_SYSTEMS) | set(COMPRESSED_SYSTEMS)
    assert {p["compression_rate"] for p in points} == {1.0, 8.0}
    report = (out / "report.md").read_text()
    for system in QA_SYSTEMS:
        assert f"| {system} |" in report
    assert "never seen" in report and "dvc exp run -S model.compression_rate" in report and "- note: tiny" in report
    assert "cover-EM" in report and "sub-EM" in report and "### Per question type" in report


def test_terminal_summary_is_a_few_lines_with_every_system(benchmarked):
    """What `make run` prints at the end instead of the whole report (issue 13)."""
    from clara_pipeline.benchmark import terminal_summary

    _, metrics, _, _ = benchmarked
    text = terminal_summary(metrics, {"model_name": "clara", "version": "3", "alias": "challenger", "reason": "why"})
    lines = text.splitlines()
    assert len(lines) == 3 and lines[2] == "registry: clara version 3 -> @challenger (why)"
    for system, row in metrics["qa"].items():
        assert f"{system} {row['f1']:.3f}/{row['sub_em']:.3f}" in lines[0]
    for system, row in metrics["retrieval"].items():
        assert f"{system} {row['recall@5']:.3f}" in lines[1]


def _real_data_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data.py"
    spec = importlib.util.spec_from_file_location("real_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_data_params_are_derived_from_the_project_params(tmp_path):
    from pathlib import Path

    import yaml

    rd = _real_data_module()
    base = yaml.safe_load((Path(rd.ROOT) / "params.yaml").read_text())
    wiki = rd.derive_params(base, "wiki_scp_qa", tmp_path / "wiki_scp_qa", quick=True, eval_fraction=0.1)
    assert wiki["corpus"]["source"] == "clara_stage1" and wiki["corpus"]["eval_fraction"] == 0.1
    assert wiki["corpus"]["path"].endswith("wiki_scp_qa.jsonl") and wiki["corpus"]["doc_max_tokens"] == 128
    assert wiki["model"]["doc_max_length"] == 128 and Path(wiki["train"]["deepspeed_config"]).is_absolute()
    assert [wiki["train"][s]["steps"] for s in ("stage1", "stage2", "stage3")] == [40, 20, 20]
    assert wiki["benchmark"]["max_eval_questions"] == 150 and "--quick" in wiki["benchmark"]["report_notes"]["command"]
    assert base["model"]["doc_max_length"] == 64  # the project's params are not touched
    musique = rd.derive_params(base, "musique_mini", tmp_path / "musique_mini", quick=False, eval_fraction=0.2)
    assert musique["corpus"]["source"] == "musique" and musique["corpus"]["corpus_path"].endswith("corpus.json")
    assert musique["scp"]["candidates"] == 16 and "max_eval_questions" not in musique["benchmark"]
    assert [musique["train"][s]["steps"] for s in ("stage1", "stage2", "stage3")] == [150, 75, 75]
    full = rd.derive_params(base, "musique_mini", tmp_path, quick=False, eval_fraction=0.1, full_steps=True)
    assert full["train"]["stage1"]["steps"] == base["train"]["stage1"]["steps"]


def test_real_data_skips_an_absent_set(tmp_path, capsys):
    rd = _real_data_module()
    assert rd.main(["--set", "all", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wiki_scp_qa" in out and "musique_mini" in out and out.count("absent; skipped") == 2
    assert not (tmp_path / "out").exists()
