"""tracelet: TensorBoard logs into Weights & Biases.

The in-process API mirrors the Tracelet library's public functions::

    import tracelet
    from torch.utils.tensorboard import SummaryWriter

    tracelet.start_logging(exp_name="baseline", project="my_project", backend="wandb",
                           config={"tags": ["baseline"], "lr": 1e-3})
    writer = SummaryWriter()            # no log_dir: writes into the experiment's run directory
    writer.add_scalar("loss", 0.5, 1)
    tracelet.get_active_experiment().log_artifact("model.pth", artifact_path="models/")
    tracelet.stop_logging()

A ``tracelet watch`` sidecar on the runs root turns the files into the W&B run (the training
process then needs no W&B at all); without one, the same engine runs inside this process.
See docs/python-api.md. The daemon itself lives in ``tracelet_daemon``.
"""

from tracelet_daemon._version import __version__

from ._experiment import Experiment, get_active_experiment, start_logging, stop_logging
from ._protocol import PublishedArtifact

__all__ = ["Experiment", "PublishedArtifact", "__version__", "get_active_experiment", "start_logging",
           "stop_logging"]
