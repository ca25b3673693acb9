"""Run by bench/serving.py with the MLflow peer's own python: save the fitted pipeline as an MLflow
model (mlflow.sklearn flavour, MLflow's default skops format) whose pyfunc answers predict_proba,
with a signature inferred from a sample of the training frame. Not importable from the main venv
(it needs mlflow).

    bench/.peers/mlflow/bin/python bench/peers/mlflow_save.py PIPELINE.joblib SAMPLE.parquet OUT_DIR
"""
import sys

import joblib
import mlflow.sklearn
import pandas as pd
import skops.io
from mlflow.models import infer_signature


def main(pipeline_path: str, sample_path: str, out_dir: str) -> None:
    pipeline = joblib.load(pipeline_path)
    sample = pd.read_parquet(sample_path)
    signature = infer_signature(sample, pipeline.predict_proba(sample))
    # skops refuses types it does not know (numpy.dtype here) unless told: trust what this pipeline holds
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    mlflow.sklearn.save_model(pipeline, out_dir, signature=signature, pyfunc_predict_fn="predict_proba",
                              skops_trusted_types=trusted)


if __name__ == "__main__":
    main(*sys.argv[1:4])
