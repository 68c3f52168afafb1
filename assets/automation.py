"""Automation around serving: the live index re-indexed on a schedule or when the corpus changes, and the
same work split into partitions (shards) that can run in parallel on several processes, machines or GPUs.

* ``live_index`` (group ``serving``) runs :func:`clara_pipeline.reindex.reindex`: the corpus re-read from its
  source and the champion's compressor applied to what changed. It has no upstream asset on purpose: it reads
  the corpus source and the MLflow registry, not lineage folders, so a schedule or sensor can run it alone
  every night without rematerialising (retraining) the lineage; a new champion is picked up when it runs.
* job ``reindex``; schedule ``reindex_schedule`` (params.yaml ``reindex.cron``, stopped until switched on);
  sensor ``corpus_changed`` (every ``reindex.sensor_interval_s`` seconds, run key = corpus fingerprint).
* ``compressed_shards`` (one partition per shard, ``reindex.shards``) and ``sharded_index`` (merges them):
  jobs ``reindex_shards`` (partitioned) and ``merge_shards``.

Everything is built by :func:`build_automation` from a params dict, so tests can build it from their own
params; the module-level objects come from the project's params.yaml (defaults when the ``reindex:`` section
is absent). Selections are built from objects, never strings (see definitions.py).
"""

import os
from dataclasses import dataclass

import dagster as dg

from assets.resources import ClaraProject, default_project
from clara_pipeline import reindex as rx

GROUP = "serving"
LIVE_INDEX, SHARDS, SHARDED_INDEX = "live_index", "compressed_shards", "sharded_index"
COUNT_KEYS = ("added", "updated", "removed", "unchanged", "compressed")


def _count_metadata(summary: dict) -> dict:
    meta = {k: dg.MetadataValue.int(int(summary[k])) for k in COUNT_KEYS}
    meta["full_rebuild"] = dg.MetadataValue.bool(bool(summary["full_rebuild"]))
    meta["reason"] = dg.MetadataValue.text(str(summary["reason"]))
    return meta


@dataclass(frozen=True)
class Automation:
    assets: list
    jobs: list
    schedules: list
    sensors: list
    partitions: dg.StaticPartitionsDefinition


def build_automation(params: dict) -> Automation:
    cfg = rx.reindex_settings(params)

    # ------------------------------------------------------------ live index
    @dg.asset(name=LIVE_INDEX, group_name=GROUP, kinds={"python", "faiss"},
              description="The index serving searches with: the corpus source re-read and compressed with the "
                          "registry champion's compressor, only what changed (a new champion rebuilds it). "
                          "Standalone (no upstream assets) so it can be refreshed without rerunning the lineage.")
    def live_index(context: dg.AssetExecutionContext, clara: ClaraProject) -> dg.MaterializeResult:
        os.environ.setdefault("CLARA_ORCHESTRATOR", "dagster")
        summary = rx.reindex(clara.root_path(), clara.params(), log=context.log.info)
        meta = _count_metadata(summary)
        meta.update(champion_version=dg.MetadataValue.text(summary["champion_version"]),
                    compressor=dg.MetadataValue.text(summary["compressor"]),
                    index_version=dg.MetadataValue.text(str(summary["version"])),
                    published=dg.MetadataValue.bool(summary["published"]),
                    documents=dg.MetadataValue.int(summary["count"]),
                    seconds=dg.MetadataValue.float(float(summary["seconds"])),
                    mlflow_run_id=dg.MetadataValue.text(str(summary["mlflow_run_id"])),
                    path=dg.MetadataValue.path(summary["index_dir"]))
        return dg.MaterializeResult(metadata=meta)

    reindex_job = dg.define_asset_job(
        "reindex", selection=dg.AssetSelection.assets(live_index),
        description="Re-index the live index against the corpus source with the champion's compressor.",
        executor_def=dg.in_process_executor)

    schedule = dg.ScheduleDefinition(
        name="reindex_schedule", job=reindex_job, cron_schedule=str(cfg["cron"]),
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Re-index the live index on params.yaml reindex.cron (a new champion is picked up too).")

    @dg.sensor(name="corpus_changed", job=reindex_job, minimum_interval_seconds=cfg["sensor_interval_s"],
               default_status=dg.DefaultSensorStatus.STOPPED,
               description="Requests a reindex run when the corpus source's fingerprint (file sizes and mtimes, "
                           "or the embedded corpus params) changes; the fingerprint is the cursor and run key.")
    def corpus_changed(context: dg.SensorEvaluationContext, clara: ClaraProject):
        root, params = clara.root_path(), clara.params()
        fingerprint = rx.corpus_fingerprint(root, params)
        if context.cursor is None:
            if rx.live_index_exists(root):
                return dg.SensorResult(skip_reason=dg.SkipReason(
                    f"first evaluation: live index exists, corpus fingerprint {fingerprint} recorded"),
                    cursor=fingerprint)
            return dg.SensorResult(run_requests=[dg.RunRequest(run_key=fingerprint, tags={"corpus_fingerprint": fingerprint})],
                                   cursor=fingerprint)
        if context.cursor == fingerprint:
            return dg.SkipReason(f"corpus unchanged ({fingerprint})")
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=fingerprint, tags={"corpus_fingerprint": fingerprint})],
                               cursor=fingerprint)

    # ------------------------------------------------------------ shards
    partitions = dg.StaticPartitionsDefinition([str(i) for i in range(cfg["shards"])])

    @dg.asset(name=SHARDS, group_name=GROUP, partitions_def=partitions, kinds={"python", "numpy"},
              description="One shard of the document table (row i -> shard i % N) compressed with the champion's "
                          "compressor into artifacts/shards/<shard>/; each partition can run on its own GPU.")
    def compressed_shards(context: dg.AssetExecutionContext, clara: ClaraProject) -> dg.MaterializeResult:
        from clara_pipeline.model import ClaraModel

        root, params = clara.root_path(), clara.params()
        shard, num_shards = int(context.partition_key), len(partitions.get_partition_keys())
        model_dir, cid, version = rx.champion_compressor(root, params["registry"]["model_name"])
        device = rx.pick_device(shard)
        model = ClaraModel.load(model_dir).to(device)
        summary = rx.compress_shard(model, rx.load_documents(root, params), shard, num_shards, rx.shards_dir(root),
                                    compressor_id=cid, batch_size=params["index"]["batch_size"],
                                    log=context.log.info)
        return dg.MaterializeResult(metadata={
            "documents": dg.MetadataValue.int(summary["count"]),
            "compressed": dg.MetadataValue.int(summary["compressed"]),
            "skipped": dg.MetadataValue.bool(summary["skipped"]),
            "device": dg.MetadataValue.text(device), "champion_version": dg.MetadataValue.text(version),
            "compressor": dg.MetadataValue.text(cid), "path": dg.MetadataValue.path(summary["path"])})

    @dg.asset(name=SHARDED_INDEX, group_name=GROUP, deps=[compressed_shards], kinds={"python", "faiss"},
              description="Every shard merged into one index (artifacts/sharded_index, the versions/CURRENT "
                          "layout CompressedIndex.load reads), equal to a single-process build.")
    def sharded_index(context: dg.AssetExecutionContext, clara: ClaraProject) -> dg.MaterializeResult:
        root, params = clara.root_path(), clara.params()
        summary = rx.merge_shards(rx.shards_dir(root), len(partitions.get_partition_keys()), rx.sharded_index_dir(root),
                                  settings=params["index"], batch_size=params["index"]["batch_size"],
                                  documents=rx.load_documents(root, params))
        context.log.info(f"sharded_index: {summary['reason']}; {summary['count']} documents from "
                         f"{summary['shards']} shards")
        meta = _count_metadata(summary)
        meta.update(documents=dg.MetadataValue.int(summary["count"]), shards=dg.MetadataValue.int(summary["shards"]),
                    compressor=dg.MetadataValue.text(summary["compressor_id"]),
                    index_version=dg.MetadataValue.text(str(summary["version"])),
                    path=dg.MetadataValue.path(str(rx.sharded_index_dir(root))))
        return dg.MaterializeResult(metadata=meta)

    # A partitioned and an unpartitioned asset cannot share one job: compress (one run per shard, e.g. a
    # backfill), then merge.
    shards_job = dg.define_asset_job(
        "reindex_shards", selection=dg.AssetSelection.assets(compressed_shards),  # partitioned like the asset
        description="Compress one shard of the corpus per run (backfill all partitions to run them in parallel).")
    merge_job = dg.define_asset_job(
        "merge_shards", selection=dg.AssetSelection.assets(sharded_index), executor_def=dg.in_process_executor,
        description="Merge every compressed shard into artifacts/sharded_index.")

    return Automation(assets=[live_index, compressed_shards, sharded_index],
                      jobs=[reindex_job, shards_job, merge_job], schedules=[schedule], sensors=[corpus_changed],
                      partitions=partitions)


def _project_params() -> dict:
    """The project's params.yaml, or only the defaults where none can be read (the code location still loads)."""
    try:
        return default_project().params()
    except (FileNotFoundError, ValueError):
        return {}


AUTOMATION = build_automation(_project_params())
