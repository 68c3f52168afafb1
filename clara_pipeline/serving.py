"""The joint model and its index as an MLflow pyfunc, so the registry can serve ``models:/clara@champion``.

Input: a DataFrame with a ``question`` column (optionally ``k``). Output: one row per question with the
answer and the retrieved documents' titles and scores as JSON.
"""

from __future__ import annotations

import json

import mlflow.pyfunc


class ClaraPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from clara_pipeline.inference import ClaraRAG

        self.rag = ClaraRAG.load(context.artifacts["model"], context.artifacts["index"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if "question" not in model_input.columns:
            raise ValueError("input needs a 'question' column")
        k = int((params or {}).get("k", 3))
        results = self.rag.ask([str(q) for q in model_input["question"]], k=k)
        return pd.DataFrame({
            "question": [r["question"] for r in results],
            "answer": [r["answer"] for r in results],
            "documents": [json.dumps(r["documents"]) for r in results],
        })
