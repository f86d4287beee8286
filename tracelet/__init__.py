"""tracelet: TensorBoard logs into Weights & Biases.

The in-process shim (``start_logging``, ``get_active_experiment``, ``stop_logging``) lands here;
the daemon lives in ``tracelet_daemon``.
"""

from tracelet_daemon._version import __version__

__all__ = ["__version__"]
