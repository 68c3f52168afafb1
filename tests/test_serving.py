"""Serving the registry's champion: the tiny lineage materialised once by Dagster, then
``mlflow models serve -m models:/clara@champion`` as a real HTTP server, plus the model-from-code pyfunc
in-process (signature, bounds, live index)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from clara_pipeline import tracking
from tests.conftest import ROOT, tiny_params

MODEL_NAME = tiny_params()["registry"]["model_name"]
QUESTION = "Who created the first work?"


@pytest.fixture(scope="module")
def materialised(tiny_lineage):
    root, run = tiny_lineage
    assert run.success, run.printed[-4000:]
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status


def _post(url: str, payload: dict, timeout: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def server(materialised, tmp_path_factory):
    """`mlflow models serve` on the champion, in its own process group (killed as a group at the end)."""
    root = materialised
    venv_bin = ROOT / ".venv" / "bin"
    bin_dir = venv_bin if (venv_bin / "mlflow").exists() else Path(sys.executable).parent
    store = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    # both URIs: mlflow.set_registry_uri in this process exported MLFLOW_REGISTRY_URI for whichever
    # project the session configured last, and the server would look for the model there
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store}
    env.pop("CLARA_INDEX_DIR", None)  # the logged snapshot, not a live index
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if _get(f"{url}/ping") == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no /ping from mlflow models serve in 120 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def test_http_answers_with_documents_and_respects_k(server):
    status, body = _post(f"{server}/invocations", {
        "dataframe_split": {"columns": ["question"], "data": [[QUESTION], ["Where was it founded?"]]},
        "params": {"k": 2},
    })
    assert status == 200, body
    rows = body["predictions"]
    assert [r["question"] for r in rows] == [QUESTION, "Where was it founded?"]
    for row in rows:
        assert set(row) == {"question", "answer", "documents"} and isinstance(row["answer"], str)
        docs = row["documents"]  # a JSON array, not a string holding one
        assert isinstance(docs, list) and len(docs) == 2
        assert all(isinstance(d["title"], str) and d["title"] and isinstance(d["score"], float) for d in docs)
        assert docs[0]["score"] >= docs[1]["score"]

    # the `inputs` form, and the default k (5)
    status, body = _post(f"{server}/invocations", {"inputs": {"question": [QUESTION]}})
    assert status == 200, body
    assert len(body["predictions"][0]["documents"]) == 5


@pytest.mark.parametrize("payload, limit", [
    ({"dataframe_split": {"columns": ["question"], "data": [["x" * 2000]]}}, "the limit is 1000"),
    ({"dataframe_split": {"columns": ["question"], "data": [[QUESTION]]}, "params": {"k": 51}},
     "k must be an integer between 1 and 50"),
    ({"dataframe_split": {"columns": ["question"], "data": [[QUESTION]] * 33}}, "the limit is 32 per request"),
    ({"dataframe_split": {"columns": ["question"], "data": [[QUESTION]]}, "params": {"max_new_tokens": 1000}},
     "max_new_tokens must be an integer between 1 and 64"),
])
def test_http_refuses_requests_out_of_bounds(server, payload, limit):
    status, body = _post(f"{server}/invocations", payload)
    assert status == 400, body
    assert limit in body.get("message", ""), body
    # the message is the one line that says what to fix, not MLflow's dump of the request's DataFrame
    assert "\n" not in body["message"] and "Failed to predict data" not in body["message"], body


def test_champion_is_a_model_from_code_with_a_signature(materialised):
    mlflow = tracking.configure(materialised)
    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}@champion")
    pyfunc_conf = info.flavors["python_function"]
    assert pyfunc_conf.get("model_code_path", "").endswith("serving_model.py")
    assert "python_model" not in pyfunc_conf or not str(pyfunc_conf["python_model"]).endswith(".pkl")
    signature = info.signature
    assert signature.inputs.input_names() == ["question"]
    assert signature.outputs.input_names() == ["question", "answer", "documents"]
    assert {p.name: p.default for p in signature.params} == {"k": 5, "max_new_tokens": 16}
    documents = signature.outputs.inputs[2].type.to_dict()  # an array of objects, not a string
    assert documents["type"] == "array" and set(documents["items"]["properties"]) == {"id", "title", "score"}


def test_defining_the_pyfunc_raises_no_mlflow_warning():
    """MLflow warns when a PythonModel's predict has no type hint, at every import of the class (every
    `clara ask`, every server start); the DataFrame hint keeps the explicit signature and is silent."""
    out = subprocess.run([sys.executable, "-W", "always", "-c", "import clara_pipeline.serving"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr


def _live_copy(root: Path, dest: Path) -> Path:
    live = dest / "live_index"
    shutil.copytree(root / "artifacts" / "compressed_index", live)
    return live


def test_live_index_is_served_and_followed(materialised, tmp_path, monkeypatch):
    """CLARA_INDEX_DIR: that folder's published version is served, and a newly published one is picked up."""
    import pandas as pd

    from clara_pipeline.index import current_version_dir

    mlflow = tracking.configure(materialised)
    live = _live_copy(materialised, tmp_path)
    monkeypatch.setenv("CLARA_INDEX_DIR", str(live))
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    served = model.unwrap_python_model()
    first = current_version_dir(live)
    assert served.index_path == first
    out = model.predict(pd.DataFrame({"question": [QUESTION]}), params={"k": 2})
    titles = [d["title"] for d in out["documents"][0]]

    # publish a "new version" by hand: the same vectors, every title renamed, CURRENT moved to it
    newer = first.parent / "v-test-renamed"
    shutil.copytree(first, newer)
    docs = [json.loads(line) for line in (newer / "documents.jsonl").read_text().splitlines()]
    (newer / "documents.jsonl").write_text("".join(json.dumps({**d, "title": "NEW " + d["title"]}) + "\n" for d in docs))
    (live / "CURRENT").write_text(newer.name + "\n")
    out = model.predict(pd.DataFrame({"question": [QUESTION]}), params={"k": 2})
    assert [d["title"] for d in out["documents"][0]] == ["NEW " + t for t in titles]
    assert served.index_path == newer


def test_live_index_of_another_shape_is_refused(materialised, tmp_path, monkeypatch):
    from clara_pipeline.index import current_version_dir

    mlflow = tracking.configure(materialised)
    live = _live_copy(materialised, tmp_path)
    meta_path = current_version_dir(live) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["n_mem"] = meta["n_mem"] * 2
    meta_path.write_text(json.dumps(meta))
    monkeypatch.setenv("CLARA_INDEX_DIR", str(live))
    with pytest.raises(Exception, match=r"index holds .* vectors per document, this model makes"):
        mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    monkeypatch.setenv("CLARA_INDEX_DIR", str(tmp_path / "missing"))
    with pytest.raises(Exception, match="CLARA_INDEX_DIR=.*: no such folder"):
        mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")


def test_in_process_bounds_are_value_errors(materialised):
    import pandas as pd

    mlflow = tracking.configure(materialised)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    with pytest.raises(ValueError, match="the limit is 1000"):
        model.predict(pd.DataFrame({"question": ["x" * 1001]}))
    with pytest.raises(ValueError, match="k must be an integer between 1 and 50"):
        model.predict(pd.DataFrame({"question": [QUESTION]}), params={"k": 0})


def test_clara_dtype_casts_the_served_model(materialised, monkeypatch):
    """CLARA_DTYPE=bfloat16 serves the champion cast for inference; a dtype it does not know is refused."""
    import pandas as pd
    import torch

    mlflow = tracking.configure(materialised)
    monkeypatch.setenv("CLARA_DTYPE", "bfloat16")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    assert model.unwrap_python_model().rag.model.mem_embeddings.dtype == torch.bfloat16
    out = model.predict(pd.DataFrame({"question": [QUESTION]}), params={"k": 2})
    assert isinstance(out["answer"][0], str) and len(out["documents"][0]) == 2
    monkeypatch.setenv("CLARA_DTYPE", "int8")
    with pytest.raises(Exception, match="dtype 'int8' is not one of auto, float32, bfloat16, float16"):
        mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
