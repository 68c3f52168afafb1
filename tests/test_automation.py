"""Serving automation (assets/automation.py, clara_pipeline/reindex.py): the live index re-indexed against the
registry champion, its schedule and corpus sensor, and the sharded (partitioned) build, on the tiny lineage."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml

from assets.automation import AUTOMATION, build_automation
from assets.resources import ClaraProject
from clara_pipeline import reindex as rx
from clara_pipeline import registry, tracking
from clara_pipeline.config import load_params
from clara_pipeline.jsonl import read_jsonl
from tests.conftest import ROOT, tiny_params


def _write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _write_corpus(path: Path, docs: list[dict]) -> None:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


def _materialise(assets, root: Path, **kwargs) -> dg.ExecuteInProcessResult:
    result = dg.materialize(assets, resources={"clara": ClaraProject(root=str(root))},
                            instance=kwargs.pop("instance", None) or dg.DagsterInstance.ephemeral(), **kwargs)
    assert result.success
    return result


def _metadata(result, key: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture(scope="module")
def lineage(tiny_lineage) -> Path:
    """The tiny lineage with the registered joint model version 1 as champion (shared: tests copy it)."""
    root, run = tiny_lineage
    assert run.success, run.printed[-4000:]
    return root


@pytest.fixture
def project(lineage, tmp_path) -> Path:
    """A private copy of the lineage project (its own artifacts and MLflow store)."""
    copy = tmp_path / "project"
    shutil.copytree(lineage, copy)
    return copy


def _jsonl_source(root: Path, docs: list[dict]) -> dict:
    """Switch the project to a JSONL corpus file holding ``docs``; returns the params."""
    _write_corpus(root / "corpus.jsonl", docs)
    params = load_params(root / "params.yaml")
    params["corpus"] = {"source": "jsonl", "path": "corpus.jsonl"}
    _write_params(root, params)
    return params


def _source_docs(root: Path) -> list[dict]:
    return [{"id": d["id"], "title": d["title"], "text": d["text"]}
            for d in read_jsonl(root / "artifacts" / "raw_corpus" / "documents.jsonl")]


# ---------------------------------------------------------------- (e) definitions
def test_definitions_hold_reindex_job_schedule_sensor_and_partitions():
    from assets.definitions import defs

    job = defs.resolve_job_def("reindex")
    assert {n.name for n in job.graph.node_defs} == {"live_index"}
    assert defs.resolve_job_def("clara_lineage") is not None
    shards_job = defs.resolve_job_def("reindex_shards")
    keys = shards_job.partitions_def.get_partition_keys()
    assert keys == [str(i) for i in range(rx.reindex_settings(load_params(ROOT / "params.yaml"))["shards"])]
    assert {n.name for n in defs.resolve_job_def("merge_shards").graph.node_defs} == {"sharded_index"}
    schedule = defs.resolve_schedule_def("reindex_schedule")
    assert schedule.job_name == "reindex"
    assert schedule.cron_schedule == rx.reindex_settings(load_params(ROOT / "params.yaml"))["cron"]
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    sensor = defs.resolve_sensor_def("corpus_changed")
    assert sensor.job_name == "reindex"
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).group_name == "serving"} == {
        "live_index", "compressed_shards", "sharded_index"}
    # standalone: the live index never drags the lineage into a scheduled run
    assert graph.get(dg.AssetKey("live_index")).parent_keys == set()
    assert graph.get(dg.AssetKey("sharded_index")).parent_keys == {dg.AssetKey("compressed_shards")}


# ---------------------------------------------------------------- (a) schedule
def test_schedule_requests_a_reindex_run_on_the_cron_from_params():
    params = tiny_params()
    params["reindex"] = {"cron": "15 4 * * 1", "sensor_interval_s": 30, "shards": 3}
    auto = build_automation(params)
    [schedule] = auto.schedules
    assert schedule.cron_schedule == "15 4 * * 1"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    [sensor] = auto.sensors
    assert sensor.minimum_interval_seconds == 30
    assert auto.partitions.get_partition_keys() == ["0", "1", "2"]
    context = dg.build_schedule_context(scheduled_execution_time=datetime.datetime(2026, 1, 5, 4, 15))
    data = schedule.evaluate_tick(context)
    assert len(data.run_requests) == 1 and schedule.job_name == "reindex"
    # without a reindex section: the defaults
    default = build_automation(tiny_params())
    assert default.schedules[0].cron_schedule == "0 3 * * *"
    assert default.sensors[0].minimum_interval_seconds == 60
    assert len(default.partitions.get_partition_keys()) == 4
    with pytest.raises(ValueError, match="unknown reindex settings"):
        build_automation({**tiny_params(), "reindex": {"chards": 2}})


# ---------------------------------------------------------------- (b) sensor
def _tick(sensor, root: Path, cursor: str | None, instance):
    context = dg.build_sensor_context(cursor=cursor, instance=instance, resources={"clara": ClaraProject(root=str(root))})
    return sensor.evaluate_tick(context)


def test_sensor_requests_a_run_when_the_corpus_changes(tiny_project):
    root = tiny_project
    [sensor] = build_automation(load_params(root / "params.yaml")).sensors
    with dg.DagsterInstance.ephemeral() as instance:
        # first evaluation, no live index yet: index now
        first = _tick(sensor, root, None, instance)
        fp0 = rx.corpus_fingerprint(root, load_params(root / "params.yaml"))
        assert [r.run_key for r in first.run_requests] == [fp0] and first.cursor == fp0
        # nothing changed
        same = _tick(sensor, root, fp0, instance)
        assert not same.run_requests and "unchanged" in same.skip_message
        # embedded corpus params change -> new fingerprint
        params = load_params(root / "params.yaml")
        params["corpus"]["num_works"] += 1
        _write_params(root, params)
        changed = _tick(sensor, root, fp0, instance)
        fp1 = changed.cursor
        assert fp1 != fp0 and [r.run_key for r in changed.run_requests] == [fp1]
        # a JSONL corpus file: switching to it, then editing it, each request a run with a new key
        _jsonl_source(root, [{"id": "a", "title": "A", "text": "Alpha town lies on the river Vell."}])
        switched = _tick(sensor, root, fp1, instance)
        fp2 = switched.cursor
        assert fp2 not in (fp0, fp1) and [r.run_key for r in switched.run_requests] == [fp2]
        assert not _tick(sensor, root, fp2, instance).run_requests
        corpus = root / "corpus.jsonl"
        st = corpus.stat()
        with corpus.open("a") as fh:
            fh.write(json.dumps({"id": "b", "title": "B", "text": "Beta is a village."}) + "\n")
        os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        edited = _tick(sensor, root, fp2, instance)
        fp3 = edited.cursor
        assert fp3 != fp2 and [r.run_key for r in edited.run_requests] == [fp3]
        # touching the file alone (same size, new mtime) counts as a possible change too
        os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        touched = _tick(sensor, root, fp3, instance)
        assert touched.cursor != fp3 and len(touched.run_requests) == 1
        # first evaluation when a live index exists: only record the cursor
        (rx.live_index_dir(root)).mkdir(parents=True)
        (rx.live_index_dir(root) / "CURRENT").write_text("v1\n")
        fresh = _tick(sensor, root, None, instance)
        assert not fresh.run_requests and fresh.cursor == rx.corpus_fingerprint(root, load_params(root / "params.yaml"))


def test_fingerprint_covers_every_configured_file(tmp_path):
    (tmp_path / "q.jsonl").write_text("{}\n")
    (tmp_path / "c.jsonl").write_text("{}\n")
    params = {"seed": 0, "corpus": {"source": "musique", "path": "q.jsonl", "corpus_path": "c.jsonl"}}
    before = rx.corpus_fingerprint(tmp_path, params)
    assert rx.corpus_fingerprint(tmp_path, params) == before
    (tmp_path / "c.jsonl").write_text("{}\n{}\n")
    assert rx.corpus_fingerprint(tmp_path, params) != before
    missing = {"seed": 0, "corpus": {"source": "jsonl", "paths": ["nope.jsonl"]}}
    assert rx.corpus_fingerprint(tmp_path, missing) != rx.corpus_fingerprint(
        tmp_path, {"seed": 0, "corpus": {"source": "jsonl", "paths": ["q.jsonl"]}})


# ---------------------------------------------------------------- (c) live index
def _live_index_asset(params: dict):
    return next(a for a in build_automation(params).assets if a.key.to_user_string() == "live_index")


def test_live_index_builds_then_follows_corpus_edits(project):
    from clara_pipeline.index import CompressedIndex

    docs = _source_docs(project)
    params = _jsonl_source(project, docs)
    asset = _live_index_asset(params)

    first = _metadata(_materialise([asset], project), "live_index")
    n = len(docs)
    assert first["added"] == first["compressed"] == n and first["full_rebuild"] is True
    assert first["reason"] == "no published index" and first["champion_version"] == "1"
    assert (first["updated"], first["removed"], first["unchanged"]) == (0, 0, 0)

    # one document deleted, one edited, one added
    edited = [dict(d) for d in docs[1:]]
    edited[0]["text"] += " It also has a lighthouse."
    edited.append({"id": "new", "title": "Nova", "text": "Nova is a new town founded in 2024."})
    _write_corpus(project / "corpus.jsonl", edited)
    second = _metadata(_materialise([asset], project), "live_index")
    # Imported documents are identified by a hash of title + text (importers.doc_id), so an edited document
    # is a new id: the edit shows as one removed + one added. Only the two new texts are compressed.
    assert (second["added"], second["updated"], second["removed"], second["unchanged"], second["compressed"]) == (
        2, 0, 2, n - 2, 2)
    assert second["full_rebuild"] is False and second["reason"] == "incremental update"
    index = CompressedIndex.load(rx.live_index_dir(project))
    assert [d["text"] for d in index.documents] == [d["text"] for d in edited]

    third = _metadata(_materialise([asset], project), "live_index")
    assert third["compressed"] == 0 and third["reason"] == "no changes"

    mlflow = tracking.configure(project)
    runs = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], filter_string="tags.stage = 'reindex'",
                              output_format="list")
    assert len(runs) == 3
    assert sorted(r.data.metrics["update.compressed"] for r in runs) == [0, 2, n]
    assert all(r.info.run_name == "reindex" for r in runs)


def test_embedded_source_edit_counts_as_update(project):
    """The embedded corpus keeps its ids (doc-<entity>): the same documents with changed text are updates."""
    from clara_pipeline.model import ClaraModel

    params = load_params(project / "params.yaml")
    summary = rx.reindex(project, params, log=lambda m: None)
    assert summary["full_rebuild"] and summary["compressed"] == summary["count"]
    # stand-in for an edited corpus: the same ids, one text changed, one removed, one added
    docs = rx.load_documents(project, params)
    changed = [dict(d) for d in docs[1:]] + [{"id": "doc-new", "title": "Nova", "text": "Nova is a new town."}]
    changed[0]["text"] += " It also has a lighthouse."
    from clara_pipeline.index import update_index

    model_dir, cid, _ = rx.champion_compressor(project, params["registry"]["model_name"])
    result = update_index(ClaraModel.load(model_dir), changed, rx.live_index_dir(project), compressor_id=cid,
                          settings=params["index"])
    assert {k: result[k] for k in ("added", "updated", "removed", "compressed")} == {
        "added": 1, "updated": 1, "removed": 1, "compressed": 2}


def test_new_champion_rebuilds_the_live_index(project):
    """A newly promoted version with other compressor weights invalidates every stored vector."""
    from safetensors.torch import load_file, save_file

    params = load_params(project / "params.yaml")
    name = params["registry"]["model_name"]
    first = rx.reindex(project, params, log=lambda m: None)
    assert first["champion_version"] == "1"

    retrained = project / "retrained"
    shutil.copytree(project / "artifacts" / "clara_model", retrained)
    weights = load_file(str(retrained / "weights.safetensors"))
    key = sorted(weights)[0]
    weights[key] = weights[key] * 1.01
    save_file(weights, str(retrained / "weights.safetensors"))
    from clara_pipeline.index import current_version_dir

    with tracking.stage_run(project, "clara_model", {}) as run:
        version = registry.register(run, name, retrained, current_version_dir(project / "artifacts" / "compressed_index"))
    registry.set_alias_by_hand(project, name, version)

    second = rx.reindex(project, params, log=lambda m: None)
    assert second["champion_version"] == version == "2"
    assert second["full_rebuild"] is True and second["reason"].startswith("compressor changed")
    assert second["compressed"] == second["count"] and second["compressor"] != first["compressor"]
    assert (rx.champion_cache_dir(project) / "2" / "model" / "weights.safetensors").is_file()


# ---------------------------------------------------------------- (d) partitions
def test_sharded_index_equals_a_single_build(project, tmp_path):
    from clara_pipeline.index import CompressedIndex, update_index
    from clara_pipeline.model import ClaraModel

    params = load_params(project / "params.yaml")
    params["reindex"] = {"shards": 3}
    _write_params(project, params)
    auto = build_automation(params)
    shards_asset, merged_asset = (next(a for a in auto.assets if a.key.to_user_string() == k)
                                  for k in ("compressed_shards", "sharded_index"))
    with dg.DagsterInstance.ephemeral() as instance:
        for key in auto.partitions.get_partition_keys():
            meta = _metadata(_materialise([shards_asset], project, partition_key=key, instance=instance),
                             "compressed_shards")
            assert meta["device"] == "cpu" and meta["skipped"] is False
        merged = _metadata(_materialise([shards_asset, merged_asset], project, selection=[merged_asset],
                                        instance=instance), "sharded_index")
    docs = rx.load_documents(project, params)
    assert merged["documents"] == len(docs) and merged["shards"] == 3 and merged["compressed"] == len(docs)
    for shard in range(3):
        assert json.loads((rx.shards_dir(project) / str(shard) / "meta.json").read_text())["count"] == len(
            rx.shard_rows(len(docs), shard, 3))

    model_dir, cid, _ = rx.champion_compressor(project, params["registry"]["model_name"])
    model = ClaraModel.load(model_dir)
    update_index(model, docs, tmp_path / "single", compressor_id=cid, settings=params["index"])
    single, sharded = CompressedIndex.load(tmp_path / "single"), CompressedIndex.load(rx.sharded_index_dir(project))
    assert [d["id"] for d in sharded.documents] == [d["id"] for d in single.documents]
    assert sharded.meta["compressor"] == single.meta["compressor"] == cid
    queries = model.encode_queries([q["question"] for q in read_jsonl(
        project / "artifacts" / "raw_corpus" / "questions_eval.jsonl")]).numpy()
    s1, r1 = single.search(queries, 10)
    s2, r2 = sharded.search(queries, 10)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)

    # a shard compressed from another corpus cannot be merged silently
    edited = [dict(d) for d in docs]
    edited[0]["text"] += " Edited."
    rx.compress_shard(model, edited, 0, 3, rx.shards_dir(project), compressor_id=cid, log=lambda m: None)
    with pytest.raises(ValueError, match="stale"):
        rx.merge_shards(rx.shards_dir(project), 3, tmp_path / "bad", settings=params["index"])


def test_shard_rows_cover_the_table_once():
    rows = np.concatenate([rx.shard_rows(10, s, 4) for s in range(4)])
    assert sorted(rows.tolist()) == list(range(10))
    with pytest.raises(ValueError):
        rx.shard_rows(10, 4, 4)


def test_module_level_automation_is_what_definitions_use():
    from assets.definitions import defs

    assert defs.resolve_sensor_def("corpus_changed").minimum_interval_seconds == \
        rx.reindex_settings(load_params(ROOT / "params.yaml"))["sensor_interval_s"]
    assert AUTOMATION.jobs[0].name == "reindex"
