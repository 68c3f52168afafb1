"""The serving benchmarks run end to end on small inputs (their figures are not checked: this machine's
timings are not a test): benchmarks/latency.py on the tiny lineage, reporting every section it is asked
for and refusing what it cannot measure, and benchmarks/index_search.py with its search-time sweeps."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def latency():
    return load_script("latency")


def summary_rows(out: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in out.split("## Summary", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 5 and cells[0] not in ("generator", "---"):
            rows[(cells[0], cells[1])] = cells
    return rows


def test_embedded_in_both_dtypes(latency, tiny_lineage, capsys):
    root, _ = tiny_lineage
    # --threads 0: leave torch's thread count alone for the rest of the session
    assert latency.main(["--root", str(root), "--generators", "embedded", "--dtypes", "bfloat16,float32",
                         "--questions", "3", "--warmup", "1", "--max-new-tokens", "3", "--threads", "0"]) == 0
    out = capsys.readouterr().out
    rows = summary_rows(out)
    assert list(rows) == [("embedded", "float32"), ("embedded", "bfloat16")]  # float32 first: cast down only
    for cells in rows.values():
        input_ratio, doc_ratio = (float(c.rstrip("x")) for c in cells[2:4])
        assert doc_ratio > input_ratio > 1  # full text reads more; documents alone differ the most
        assert cells[-1] in ("MET", "NOT MET")
    assert out.count("generator TTFT ~=") == 2 and "bfloat16 vs float32: the same compressed-path answer" in out
    assert "retrieved the same documents for every question: True" in out


def test_large_generator_over_passages(latency, tiny_lineage, tmp_path, monkeypatch, capsys):
    """The 0.5b sections with a tiny stand-in generator (the real shape is minutes on CPU): the passages are
    filtered to those filling the budget, and their own questions are asked."""
    root, _ = tiny_lineage
    monkeypatch.setattr(latency, "LARGE_GENERATOR", {"hidden_size": 48, "intermediate_size": 96,
                                                     "num_hidden_layers": 2, "num_attention_heads": 2,
                                                     "num_key_value_heads": 1})
    long_text = "This a document about {0}. " + " ".join(f"{{0}} fact {i} is stated here." for i in range(12))
    rows = [{"question": [f"What is fact 3 of {name}?"], "answers": ["x"], "docs": [long_text.format(name)]}
            for name in ("Alba", "Corva", "Tessel", "Marrow", "Vell", "Lintel", "Oren")]
    rows.append({"question": ["Too short?"], "answers": ["x"], "docs": ["Short."]})
    passages = tmp_path / "wiki.jsonl"
    passages.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert latency.main(["--root", str(root), "--generators", "0.5b", "--dtypes", "float32",
                         "--large-questions", "2", "--warmup", "1", "--large-new-tokens", "2", "--threads", "0",
                         "--passages", str(passages), "--passages-doc-max-length", "16"]) == 0
    out = capsys.readouterr().out
    assert [key[0] for key in summary_rows(out)] == ["0.5b", "0.5b, Wikipedia passages, doc_max_length 16"]
    assert re.search(r"flat index of 7 documents .*7 of 8 passages", out)  # the short one is left out
    assert "n_mem 2, doc_max_length 16" in out


def test_refusals(latency, tmp_path, capsys):
    assert latency.main(["--root", str(tmp_path)]) == 1
    assert "make run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        latency.main(["--root", str(tmp_path), "--dtypes", "int8"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": ["q"], "docs": ["text"]}) + "\n" + json.dumps({"question": ["q"]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: record 2 has no passage"):
        latency.read_passages(bad)


def test_index_search_sweeps_search_settings_on_one_build(tmp_path, capsys):
    index_search = load_script("index_search")
    out_json = tmp_path / "rows.json"
    assert index_search.main(["--sizes", "20000", "--queries", "20", "--clusters", "50", "--sweep-ef-search", "128",
                              "--sweep-nprobe", "32", "--sweep-pq-rerank", "16", "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())
    kinds = [(r["type"], r["build_s"] is None) for r in rows]
    # flat; ivf + its nprobe sweep; hnsw + ef sweep; pq codes alone + nprobe; pq default rerank + nprobe + rerank=16
    assert kinds == [("flat", False), ("ivf", False), ("ivf", True), ("hnsw", False), ("hnsw", True),
                     ("pq", False), ("pq", True), ("pq", False), ("pq", True), ("pq", True)]
    assert rows[0]["recall@10"] == 1.0 and all(0.0 <= r["recall@10"] <= 1.0 for r in rows)
    assert "ef_search=128 (same build)" in rows[4]["settings"] and "rerank=16" in rows[9]["settings"]
    assert "| 20,000 | hnsw |" in capsys.readouterr().out


def test_checkpoint_probe_reads_a_trained_model(tiny_lineage, capsys, tmp_path):
    probe = load_script("checkpoint_probe")
    root, _ = tiny_lineage
    assert probe.main(["--root", str(root), "--model", str(root / "artifacts" / "clara_model"),
                       "--questions", "4", "--max-new-tokens", "2", "--list-sizes", "5,1",
                       "--bm25-sizes", "1,3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["R@5"] <= 1 and set(out["oracle_compressed"]) == {"em", "f1", "sub_em"}
    assert set(out["oracle_compressed_top5"]) == set(out["oracle_compressed_top1"]) == {"em", "f1", "sub_em"}
    assert set(out["oracle_compressed_top1_f1_by_type"]) == set(out["oracle_compressed_f1_by_type"])
    assert set(out["bm25_compressed_top1"]) == set(out["bm25_compressed_top3"]) == {"em", "f1", "sub_em"}
    assert len(out["examples"]) == 3 and out["model"].endswith("clara_model")
    gain = out["memory_gain"]
    assert gain["documents"] >= 2 and gain["own"] > 0 and abs(gain["gain"] - (gain["other"] - gain["own"])) <= 0.0015
    assert 0 <= out["R@5_rerank"] <= 1 and 0 <= out["R@5_bm25"] <= 1
    assert probe.main(["--root", str(root), "--model", str(root / "artifacts" / "clara_model"),
                       "--questions", "4", "--retrieval-only", "--split", "train"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"R@5", "R@5_rerank", "R@5_bm25", "model", "seconds"}
    assert probe.main(["--root", str(tmp_path)]) == 2
    assert "run the lineage first" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--fresh", "40"]])
def test_stage1_reading_probes_memory_gain_while_training(tiny_lineage, capsys, extra, tmp_path):
    reading = load_script("stage1_reading")
    root, _ = tiny_lineage
    assert reading.main(["--root", str(root), "--steps", "2", "--every", "1", "--probe-docs", "4", *extra]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["step"] for r in rows[:2]] == [1, 2] and all(r["documents"] == 4 and r["own"] > 0 for r in rows[:2])
    assert rows[2]["steps"] == 2 and (30 <= rows[2]["training_documents"] <= 40 if extra else True)
    assert reading.main(["--root", str(tmp_path)]) == 2


def test_oracle_text_tuned_tunes_the_generator_on_text(tiny_lineage, capsys, tmp_path):
    tuned = load_script("oracle_text_tuned")
    root, _ = tiny_lineage
    assert tuned.main(["--root", str(root), "--steps", "2", "--questions", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 2 and out["questions"] == 4 and set(out["oracle_text_tuned"]) == {"em", "f1", "sub_em"}
    assert out["first_loss"] > 0 and "oracle_compressed" in out and "oracle_text" in out
    # a report that read another number of documents than params.yaml says is not set beside the tuned figure
    other = tmp_path / "other"
    other.mkdir()
    (other / "artifacts").symlink_to(root / "artifacts")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["benchmark"]["top_k"] = int(params["benchmark"]["top_k"]) + 1
    (other / "params.yaml").write_text(yaml.safe_dump(params))
    assert tuned.main(["--root", str(other), "--steps", "1", "--questions", "2"]) == 0
    captured = capsys.readouterr()
    assert "oracle_compressed" not in json.loads(captured.out) and "its rows are left out" in captured.err
    assert tuned.main(["--root", str(tmp_path)]) == 2
    assert "run the lineage first" in capsys.readouterr().err


def test_pretrain_probe_pretrains_tunes_and_probes(tiny_lineage, capsys, tmp_path):
    pretrain = load_script("pretrain_probe")
    root, _ = tiny_lineage
    assert pretrain.main(["--root", str(root), "--pretrain-steps", "2", "--pretrain-documents", "40",
                          "--corpus-stage1-steps", "1", "--stage2-steps", "2", "--stage2-frozen-compressor",
                          "--stage2-lr", "1e-4", "--stage2-reconstruction-weight", "0.5",
                          "--questions", "4", "--save-pretrained", str(tmp_path / "pre"), "--verbose",
                          "--save-stage2", str(tmp_path / "tuned")]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert "step 0: loss=" in captured.err and "stage2: 2 steps, forward in" in captured.err  # --verbose: progress
    assert [r["phase"] for r in rows] == ["pretrained", "corpus_stage1", "stage2"]
    assert 30 <= rows[0]["training_documents"] <= 40 and rows[0]["own"] > 0 and rows[1]["steps"] == 1
    assert rows[2]["train_compressor"] is False and rows[2]["lr"] == 1e-4 and rows[2]["reconstruction_weight"] == 0.5
    assert set(rows[2]["oracle_compressed"]) == {"em", "f1", "sub_em"} and "memory_gain" in rows[2]
    assert (tmp_path / "tuned" / "clara_config.json").is_file()  # --save-stage2: for checkpoint_probe --model
    # the saved pretrained model comes back as it was (to try another stage-2 recipe without pretraining
    # again), and --pretrain-steps continues its pretraining on a fresh schedule
    assert pretrain.main(["--root", str(root), "--from-pretrained", str(tmp_path / "pre"), "--pretrain-documents",
                          "40", "--pretrain-steps", "1", "--pretrain-lr", "2e-4", "--pretrain-targets", "scp",
                          "--stage2-steps", "1", "--stage2-fresh-questions", "4", "--questions", "4"]) == 0
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["phase"] for r in again] == ["loaded", "pretrained", "stage2"]
    assert abs(again[0]["own"] - rows[0]["own"]) < 1e-3 and again[2]["train_compressor"] is True
    assert again[1]["continued_from"] == str(tmp_path / "pre") and again[1]["lr"] == 2e-4
    assert rows[0]["targets"] == "reconstruction" and again[1]["targets"] == "scp"
    assert again[1]["steps"] == 1 and again[1]["own"] != again[0]["own"]  # it trained
    assert rows[2]["fresh_questions"] == 0 and again[2]["fresh_questions"] == 4
    # the fresh questions: one per document, about it, never the ambiguous "What is known as ...?"
    from clara_pipeline.corpus import pretraining_documents

    fresh = pretraining_documents(40, 1)
    asked = pretrain.fresh_questions(fresh, 6, {"seed": 0, "scp": {"max_qa_per_doc": 8, "candidates": 5}})
    assert len(asked) == 6 and len({r["gold_doc_ids"][0] for r in asked}) == 6
    texts = {d["id"]: d["text"] for d in fresh}
    for r in asked:
        assert r["gold_doc_ids"][0] in r["candidate_doc_ids"] and len(r["candidate_doc_ids"]) == 5
        assert r["answers"][0] in texts[r["gold_doc_ids"][0]] and not r["question"].startswith("What is known as")
    assert pretrain.main(["--root", str(tmp_path)]) == 2
    assert "run the lineage first" in capsys.readouterr().err


def test_stage2_loss_reads_text_contexts(tiny_lineage):
    """The text variant of stage 2 puts the documents' text in the prompt: the loss depends on that text."""
    from clara_pipeline.model import ClaraModel

    root, _ = tiny_lineage
    model = ClaraModel.load(root / "artifacts" / "compressor_checkpoint")
    q, a = ["Who made it?"], ["Alba Rin"]
    with_text, _ = model.stage2_loss(q, None, a, contexts=[["Alba Rin made it in 1901."]])
    other_text, _ = model.stage2_loss(q, None, a, contexts=[["The river runs north of the town."]])
    closed, _ = model.stage2_loss(q, None, a)
    with_text, other_text, closed = (float(x.detach()) for x in (with_text, other_text, closed))
    assert with_text != other_text and with_text != closed
