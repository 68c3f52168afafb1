"""The joint model and its index as an MLflow pyfunc, so the registry can serve ``models:/clara@champion``.

Logged as an MLflow *model from code*: ``registry.register`` hands MLflow the file
``clara_pipeline/serving_model.py`` (:data:`MODEL_CODE`), which selects :class:`ClaraPyfunc` with
``mlflow.models.set_model``. Nothing is pickled; the model's weights and the compressed index travel as
artifacts (``model``, ``index``) and the behaviour is this module's code.

Request: a DataFrame (``dataframe_split`` / ``dataframe_records`` / ``inputs`` over HTTP) with a ``question``
column, at most :data:`MAX_QUESTIONS` rows, each question at most ``inference.MAX_QUESTION_CHARS`` characters.
Params (optional): ``k`` documents to retrieve (1..``inference.MAX_K``, default 3) and ``max_new_tokens``
(1..``inference.MAX_NEW_TOKENS``, default 16). A request outside these bounds is refused with an error naming the
limit (HTTP 400 from ``mlflow models serve``).

Response: one row per question: ``question``, ``answer`` and ``documents``, the list of retrieved documents
``{"id", "title", "score"}``, best first (a JSON array in the HTTP response; before 2026-11-30 it was a JSON
string holding that array).

Columns and params outside the signature never reach this code: MLflow's schema enforcement drops them
before ``predict`` and logs a WARNING naming them ("Found extra inputs ...", "Unrecognized params ...") in
the server's log; a misspelt ``k`` therefore answers with the default k.

Live index: with ``CLARA_INDEX_DIR`` set where the model is loaded (e.g. the environment of
``mlflow models serve``), the index in that folder is served instead of the snapshot logged with the model,
and a version newly published there (``CURRENT`` moved by ``clara stage compressed_index``) is picked up
by the next request. It must hold vectors of the model's shape (``n_mem`` x hidden size), or loading fails
with an error saying so.

Precision: with ``CLARA_DTYPE=bfloat16`` (or ``float16``) set where the model is loaded, the model is cast
for inference; bfloat16 roughly halves latency on CPUs with AVX512-BF16 or AMX and on GPUs
(docs/index-and-serving.md). Unset or ``float32``: the trained float32 weights as saved.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array, Object, Property

log = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).resolve().parent / "serving_model.py"
INDEX_ENV = "CLARA_INDEX_DIR"
DTYPE_ENV = "CLARA_DTYPE"
MAX_QUESTIONS = 32      # rows per request: bounds one request's memory and latency
DEFAULT_K = 5  # the top-k the embedded default trains and benchmarks with (train.stage3.top_k)
DEFAULT_MAX_NEW_TOKENS = 16

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question")]),
    outputs=Schema([ColSpec("string", "question"), ColSpec("string", "answer"),
                    ColSpec(Array(Object([Property("id", "string"), Property("title", "string"),
                                          Property("score", "double")])), "documents")]),
    params=ParamSchema([ParamSpec("k", "long", DEFAULT_K), ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]),
)


class RequestError(MlflowException, ValueError):
    """A request outside the served bounds: HTTP 400 from the scoring server, a ValueError in-process."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)

    # MLflow's scoring server rewrites an error's message as "Failed to predict data '<the whole input
    # DataFrame>'. Error: ..." -- a dump of up to 32 questions in front of the one line that says what to fix.
    # The message of a request error is only ever its own.
    @property
    def message(self) -> str:
        return self._request_message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_request_message"):
            self._request_message = value


class IndexMismatchError(ValueError):
    """An index whose vectors the model cannot read (another n_mem or hidden size)."""


def _as_int(name: str, value, high: int) -> int:
    """A JSON number or string that holds an integer, as an int; the bounds are check_request's."""
    message = f"{name} must be an integer between 1 and {high}, got {value!r}"
    if isinstance(value, bool) or value is None:
        raise RequestError(message)
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise RequestError(message) from None
    if as_int != value:
        raise RequestError(message)
    return as_int


def parse_request(model_input, params: dict | None) -> tuple[list[str], int, int]:
    """(questions, k, max_new_tokens) from a pyfunc request, or RequestError naming the bound it breaks."""
    from clara_pipeline.inference import MAX_K, MAX_NEW_TOKENS, check_request

    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    elif isinstance(model_input, (list, tuple)):
        model_input = pd.DataFrame({"question": list(model_input)})
    elif isinstance(model_input, str):
        model_input = pd.DataFrame({"question": [model_input]})
    if not isinstance(model_input, pd.DataFrame) or "question" not in model_input.columns:
        raise RequestError("input needs a 'question' column")
    questions = [q if isinstance(q, str) else None for q in model_input["question"].tolist()]
    if not questions:
        raise RequestError("the request holds no questions")
    if len(questions) > MAX_QUESTIONS:
        raise RequestError(f"the request holds {len(questions)} questions; the limit is {MAX_QUESTIONS} per request")
    params = params or {}
    k = _as_int("k", params.get("k", DEFAULT_K), MAX_K)
    max_new_tokens = _as_int("max_new_tokens", params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), MAX_NEW_TOKENS)
    try:  # the bounds `clara ask` checks too, in one place
        check_request(questions, k, max_new_tokens)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return questions, k, max_new_tokens


def load_index_for(model, index_dir):
    """The published version of ``index_dir``, checked against what ``model`` makes."""
    from clara_pipeline.index import CompressedIndex

    index = CompressedIndex.load(index_dir)
    n_mem, dim = index.meta.get("n_mem"), index.meta.get("dim")
    if n_mem != model.n_mem or dim != model.memory_dim:
        raise IndexMismatchError(
            f"{index.path}: the index holds {n_mem}x{dim} vectors per document, this model makes "
            f"{model.n_mem}x{model.memory_dim}; serve an index built with this model's compressor "
            f"(unset {INDEX_ENV} to serve the index logged with the model)")
    return index


class ClaraPyfunc(mlflow.pyfunc.PythonModel):
    """``ClaraRAG`` behind the pyfunc interface; ``self.rag`` is the loaded ``ClaraRAG``."""

    def load_context(self, context):
        from clara_pipeline.inference import ClaraRAG, index_dir_for
        from clara_pipeline.model import ClaraModel

        model_dir = context.artifacts["model"]
        model = ClaraModel.load(model_dir, dtype=os.environ.get(DTYPE_ENV) or None)
        self.live_index_dir = os.environ.get(INDEX_ENV) or None
        if self.live_index_dir:
            if not Path(self.live_index_dir).is_dir():
                raise FileNotFoundError(f"{INDEX_ENV}={self.live_index_dir}: no such folder (unset {INDEX_ENV} to "
                                        "serve the index logged with the model)")
            index = load_index_for(model, self.live_index_dir)
            log.info("serving the live index %s (version %s), not the logged snapshot", index.path, index.version)
        else:
            index = load_index_for(model, index_dir_for(Path(model_dir), Path(context.artifacts["index"])))
        self.rag = ClaraRAG(model, index)
        self._lock = threading.Lock()
        self._refused: set[str] = set()

    @property
    def index_path(self) -> Path:
        return Path(self.rag.index.path)

    def refresh_index(self) -> None:
        """Live index only: follow a newly published version; a version the model cannot read is logged and
        the one already loaded keeps serving."""
        if not self.live_index_dir:
            return
        from clara_pipeline.index import current_version_dir
        from clara_pipeline.inference import ClaraRAG

        current = current_version_dir(self.live_index_dir)
        if current == self.index_path or str(current) in self._refused:
            return
        with self._lock:
            if current == self.index_path:
                return
            try:
                index = load_index_for(self.rag.model, self.live_index_dir)
            except (IndexMismatchError, FileNotFoundError, ValueError) as exc:
                self._refused.add(str(current))
                log.error("not switching to %s, still serving %s: %s", current, self.index_path, exc)
                return
            # a new ClaraRAG, swapped in one assignment: a request in flight keeps the one it started with
            self.rag = ClaraRAG(self.rag.model, index)
            log.info("switched to index version %s (%s)", index.version, index.path)

    # model_input is annotated as a DataFrame so that MLflow neither infers a schema from the hint (the
    # signature above is explicit) nor warns, at every load, that the hint is missing
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        questions, k, max_new_tokens = parse_request(model_input, params)
        self.refresh_index()
        rag = self.rag  # one index for the whole request
        results = rag.ask(questions, k=k, max_new_tokens=max_new_tokens)
        return pd.DataFrame({
            "question": [r["question"] for r in results],
            "answer": [r["answer"] for r in results],
            "documents": [[{"id": str(d["id"]), "title": str(d["title"]), "score": float(d["score"])}
                           for d in r["documents"]] for r in results],
        })
