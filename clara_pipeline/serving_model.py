"""The MLflow "model from code" entry file for the joint model + index (see ``clara_pipeline.serving``).

``registry.register`` logs this file as ``python_model``; MLflow copies it into the model and runs it when
the model is loaded (``mlflow.pyfunc.load_model``, ``mlflow models serve``), and ``set_model`` below names
the PythonModel it serves. Weights and index are the logged ``model`` and ``index`` artifacts.
"""

import os

import mlflow

# Offline by construction, as in the CLI: everything the model reads ships with it.
for _var, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                     ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _value)

from clara_pipeline.serving import ClaraPyfunc  # noqa: E402

mlflow.models.set_model(ClaraPyfunc())
