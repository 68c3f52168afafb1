"""The CLI's error path: a user's mistake is one line on stderr and exit status 2, a traceback only on --debug,
and request bounds are checked before any model loads (issue 13)."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from clara_pipeline.cli import main
from tests.conftest import tiny_params


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    monkeypatch.setenv("CLARA_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("CLARA_DEBUG", raising=False)
    return tmp_path


def one_error_line(capsys, expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert expected in err, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["stage", "nosuch"], "unknown stage 'nosuch'; stages are raw_corpus"),
    (["ask", "Who?", "--model-dir", "/nonexistent"], "/nonexistent: not a saved CLaRa model"),
    (["ask", "Who?", "--k", "0"], "k must be an integer between 1 and 50, got 0"),
    (["ask", "Who?", "--max-new-tokens", "0"], "max_new_tokens must be an integer between 1 and 64"),
    (["ask", "Who?", "--max-new-tokens", "100000"], "max_new_tokens must be an integer between 1 and 64"),
    (["ask", "Who \udcff?"], "question 0 is not valid UTF-8"),  # an undecodable byte on the command line
])
def test_a_mistake_is_one_line_and_exit_status_2(project, capsys, argv, expected):
    started = time.perf_counter()
    assert main(argv) == 2
    one_error_line(capsys, expected)
    assert time.perf_counter() - started < 60  # refused before a model loads (loading alone takes ~10 s)


def test_debug_shows_the_traceback(project, monkeypatch):
    with pytest.raises(ValueError, match="unknown stage"):
        main(["--debug", "stage", "nosuch"])
    monkeypatch.setenv("CLARA_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown stage"):
        main(["stage", "nosuch"])


@pytest.mark.parametrize("content, expected", [
    ("", "gave no documents (the file is empty)"),
    ('{"id": "a", "title": "T"}\n', "gave no documents (1 rejected as missing_field); first: "),
])
def test_a_corpus_without_documents_is_refused_at_raw_corpus_and_keeps_the_last_one(project, capsys, content,
                                                                                       expected):
    """An empty corpus used to pass raw_corpus with 0 documents and fail one stage later with a traceback."""
    out = project / "artifacts" / "raw_corpus"
    out.mkdir(parents=True)
    (out / "documents.jsonl").write_text('{"id": "old"}\n')
    corpus = project / "corpus.jsonl"
    corpus.write_text(content)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["corpus"] = {"source": "jsonl", "path": str(corpus)}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["stage", "raw_corpus"]) == 2
    err = one_error_line(capsys, expected)
    assert str(corpus) in err and "docs/data.md" in err
    assert [json.loads(line)["id"] for line in (out / "documents.jsonl").read_text().splitlines()] == ["old"]


@pytest.mark.parametrize("path, expected", [
    ("missing.jsonl", "no such file"),
    ("folder", "is a folder; give the corpus file(s) in it"),
    ("no_text.csv", "lacks required column(s) text"),
])
def test_a_corpus_path_mistake_is_one_line(project, capsys, path, expected):
    (project / "folder").mkdir()
    (project / "no_text.csv").write_text("id,title\na,T\n")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["corpus"] = {"source": "csv" if path.endswith(".csv") else "jsonl", "path": str(project / path)}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["stage", "raw_corpus"]) == 2
    assert str(project / path) in one_error_line(capsys, expected)


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_profile_writes_a_root_whose_params_are_the_defaults_with_the_profile_merged_in(tmp_path, monkeypatch):
    from clara_pipeline.config import load_params

    monkeypatch.setenv("CLARA_ROOT", str(REPO))
    assert main(["profile", "quality", "--out", str(tmp_path / "q")]) == 0
    default, profile = load_params(REPO / "params.yaml"), yaml.safe_load((REPO / "configs/profiles/quality.yaml").read_text())
    params = load_params(tmp_path / "q" / "params.yaml")
    assert params["model"]["mode"] == profile["model"]["mode"] != default["model"]["mode"]
    assert params["train"]["pretrain"]["steps"] == profile["train"]["pretrain"]["steps"]
    # untouched keys of an overridden section keep the default's values, other sections are the default's
    assert params["train"]["pretrain"]["lr"] == default["train"]["pretrain"]["lr"]
    assert params["benchmark"]["top_k"] == profile["benchmark"]["top_k"] != default["benchmark"]["top_k"]
    assert params["benchmark"]["recall_ks"] == default["benchmark"]["recall_ks"]
    assert params["corpus"] == default["corpus"]
    # the root runs on its own: DeepSpeed config and Dagster instance settings are there
    assert (tmp_path / "q" / params["train"]["deepspeed_config"]).is_file()
    assert (tmp_path / "q" / "dagster_home" / "dagster.yaml").is_file()


def test_a_profile_key_params_yaml_does_not_have_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("{}\n")
    (tmp_path / "configs" / "profiles").mkdir(parents=True)
    (tmp_path / "configs" / "profiles" / "typo.yaml").write_text("train:\n  stage2:\n    stpes: 60\n")
    monkeypatch.setenv("CLARA_ROOT", str(tmp_path))
    monkeypatch.delenv("CLARA_DEBUG", raising=False)
    assert main(["profile", "typo"]) == 2
    one_error_line(capsys, "typo.yaml: train.stage2.stpes is not set in params.yaml")
    assert main(["profile", "nosuch"]) == 2
    one_error_line(capsys, "nosuch.yaml: no such profile; the profiles are typo")
    assert not (tmp_path / "runs").exists()
