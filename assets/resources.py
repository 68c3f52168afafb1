"""Where the project lives and which params.yaml it runs with; the only thing assets need to know."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from clara_pipeline.config import Paths, load_params, project_root


class ClaraProject(dg.ConfigurableResource):
    """The project root (params.yaml, artifacts/, mlflow/). Empty means the current project."""

    root: str = ""

    def root_path(self) -> Path:
        return Path(self.root).resolve() if self.root else project_root()

    def params(self) -> dict:
        return load_params(self.root_path() / "params.yaml")

    def paths(self) -> Paths:
        return Paths(self.root_path())


def default_project() -> ClaraProject:
    return ClaraProject(root=os.environ.get("CLARA_ROOT", ""))
