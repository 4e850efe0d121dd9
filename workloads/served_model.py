"""A logged model's code (MLflow 3 models-from-code): MLflow copies this file into each model
and runs it when `mlflow models serve` or `mlflow.pyfunc.load_model` loads one. It holds no
weights and no pickle; the weights, spec and encoders are the model's artifacts. emosweep's own
`demo` and `predict` never run it (workloads/serving.py: load_logged_model)."""
from mlflow.models import set_model

from workloads.serving import CodeModel

set_model(CodeModel())
