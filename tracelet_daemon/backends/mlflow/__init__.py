"""MLflow backend: ``tracelet watch|upload ROOT --backend mlflow`` (docs/mlflow.md).

Imported only when chosen; MLflow itself is imported only when the first run opens.
"""

from .sink import MlflowBackend, MlflowRunSink
from .store import prepare_environment, resolve

__all__ = ["MlflowBackend", "MlflowRunSink", "prepare_environment", "resolve"]
