"""`clara`: run one stage (what each DVC stage calls), the whole lineage, or ask the promoted model.

    clara stage NAME            run one stage of the lineage (DVC calls exactly this)
    clara run                   run every stage in order, without an orchestrator
    clara dvc-yaml [--check]    write dvc.yaml from the stage registry (or check it is current)
    clara ask "question"        answer with the registry's champion (or --model-dir for a local model)
    clara promote VERSION       set an alias by hand (default champion)
    clara profile NAME          make runs/NAME a project root for configs/profiles/NAME.yaml (make run PROFILE=NAME)

A mistake in what you give (a stage name, a file, a value) is one line on stderr and exit status 2;
`--debug` (or CLARA_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

# Offline by construction: the project ships or generates every model and data set it uses.
for _var, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                     ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _value)


def _log(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under deepspeed/torchrun only rank 0 talks
        print(message, flush=True)


def cmd_stage(args) -> int:
    from clara_pipeline.config import Paths, load_params, project_root
    from clara_pipeline.stages import run_stage

    root = project_root()
    summary = run_stage(args.name, load_params(root / "params.yaml"), Paths(root), log=_log)
    _log(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (dict, list))}, default=str))
    return 0


def cmd_run(args) -> int:
    from clara_pipeline.config import Paths, load_params, project_root
    from clara_pipeline.stages import STAGES, run_stage

    root = project_root()
    params = load_params(root / "params.yaml")
    for stage in STAGES:
        _log(f"==> {stage.name}: {stage.description}")
        run_stage(stage.name, params, Paths(root), log=_log)
    _log(f"report: {Paths(root).benchmark_report / 'report.md'}")
    return 0


def cmd_dvc_yaml(args) -> int:
    from clara_pipeline.config import project_root
    from clara_pipeline.dvcgen import render

    root = project_root()
    text = render(root)
    target = root / "dvc.yaml"
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is out of date with clara_pipeline/stages.py; run `clara dvc-yaml`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    _log(f"wrote {target}")
    return 0


def cmd_ask(args) -> int:
    from clara_pipeline.config import Paths, load_params, project_root
    from clara_pipeline.inference import ClaraRAG, check_request

    check_request([args.question], args.k, args.max_new_tokens)  # the server's bounds, before ~10 s of loading
    root = project_root()
    if args.dtype:
        from clara_pipeline.serving import DTYPE_ENV

        os.environ[DTYPE_ENV] = args.dtype  # the registry path loads through ClaraPyfunc, which reads it
    if args.model_dir:
        rag = ClaraRAG.load(Path(args.model_dir), Paths(root).compressed_index, dtype=args.dtype)
        source = args.model_dir
    else:
        from clara_pipeline import registry, tracking

        tracking.configure(root)
        import mlflow.pyfunc

        name = args.model_name or load_params(root / "params.yaml")["registry"]["model_name"]
        uri = f"models:/{name}@{args.alias}"
        try:
            rag = mlflow.pyfunc.load_model(uri).unwrap_python_model().rag
        except Exception as exc:
            if args.alias == registry.CHAMPION and "alias" in str(exc).lower():
                print(f"no version of {name!r} is champion yet: the gate promotes a model only when it beats the "
                      f"current champion and the baselines of its own report (see promotion.json of the "
                      f"benchmark). Ask the newest model with --alias challenger, or a folder with --model-dir.",
                      file=sys.stderr)
            else:
                print(f"could not load {uri} from {tracking.tracking_uri(root)}: {exc}\n"
                      "Run the pipeline first (make run) or pass --model-dir.", file=sys.stderr)
            return 2
        source = uri
    result = rag.ask([args.question], k=args.k, max_new_tokens=args.max_new_tokens)[0]
    if args.json:
        print(json.dumps({**result, "model": source}, indent=2))
        return 0
    print(f"Q: {result['question']}\nA: {result['answer']}\n\nretrieved by {source}:")
    for i, doc in enumerate(result["documents"], 1):
        print(f"  {i}. {doc['title']}  (score {doc['score']:.3f}, {doc['id']})")
    return 0


def cmd_promote(args) -> int:
    from clara_pipeline import registry
    from clara_pipeline.config import load_params, project_root

    root = project_root()
    name = args.model_name or load_params(root / "params.yaml")["registry"]["model_name"]
    registry.set_alias_by_hand(root, name, args.version, args.alias)
    _log(f"{name} version {args.version} is now @{args.alias}")
    return 0


def cmd_profile(args) -> int:
    from clara_pipeline.config import project_root, write_profile_root

    out = write_profile_root(project_root(), args.name, Path(args.out) if args.out else None)
    _log(f"wrote {out / 'params.yaml'}; run the lineage there with CLARA_ROOT={out} (make run PROFILE={args.name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clara", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also: CLARA_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stage", help="run one stage of the lineage")
    p.add_argument("name")
    p.set_defaults(func=cmd_stage)
    p = sub.add_parser("run", help="run the whole lineage in order (no orchestrator)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("dvc-yaml", help="generate dvc.yaml from the stage registry")
    p.add_argument("--check", action="store_true", help="fail if dvc.yaml differs from the registry")
    p.set_defaults(func=cmd_dvc_yaml)
    p = sub.add_parser("ask", help="answer a question with the promoted model")
    p.add_argument("question")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--alias", default="champion")
    p.add_argument("--model-name", default=None)
    p.add_argument("--model-dir", default=None, help="a local clara_model folder instead of the registry")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="cast the model for inference (default: float32 as trained; auto: bfloat16 where native; bfloat16 is faster on CPUs "
                        "with AVX512-BF16/AMX and on GPUs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ask)
    p = sub.add_parser("promote", help="set a registry alias by hand")
    p.add_argument("version")
    p.add_argument("--alias", default="champion", choices=["champion", "challenger"])
    p.add_argument("--model-name", default=None)
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("profile", help="make a project root for a profile of configs/profiles/")
    p.add_argument("name", help="a file name of configs/profiles/ without .yaml, e.g. quality")
    p.add_argument("--out", default=None, help="the root to write (default runs/NAME)")
    p.set_defaults(func=cmd_profile)
    return parser


# What a user's mistake raises (a bad value, a missing or unreadable file, text that is not UTF-8); anything
# else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, UnicodeError)


def one_line(exc: BaseException) -> str:
    """An exception as one line: the message, with the file an OSError names."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.filename not in str(exc.args[-1]):
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the library's own INFO lines (a resumed index build, runs of killed stages ended) reach the terminal
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("clara_pipeline").setLevel(logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load is noise on a terminal
    if args.debug or os.environ.get("CLARA_DEBUG", "") not in ("", "0"):
        return args.func(args)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"clara {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
