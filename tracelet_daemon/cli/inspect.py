"""`tracelet inspect PATH`: what an offline W&B run (a .wandb file or its folder) holds."""

from __future__ import annotations

import glob
import json
import os
from typing import Annotated

import typer

from ..errors import UsageError
from ..metadata import display_text


def inspect(
    path: Annotated[str, typer.Argument(help="A run-*.wandb file or an offline-run-* folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print every history row as JSON lines.")] = False,
) -> None:
    """Read a W&B transaction log back: run, config, history and summary."""
    from ..backends.wandb.txlog import TxlogError, load_offline_run

    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "*.wandb")))
        if not found:
            raise UsageError(f"{path} holds no .wandb file")
        path = found[0]
    if not os.path.isfile(path):
        raise UsageError(f"{path} does not exist")
    try:
        run = load_offline_run(path)
    except TxlogError as exc:
        raise UsageError(str(exc)) from exc
    if as_json:
        for row in run.history:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    keys = sorted({k for row in run.history for k in row if not k.startswith("_")})
    typer.echo(f"run {run.run_id} ({display_text(run.display_name, 200)}) project {display_text(run.project, 200)}")
    typer.echo(f"finished: {run.finished}; records: {json.dumps(run.record_counts, sort_keys=True)}")
    typer.echo(f"config: {json.dumps(run.config, sort_keys=True, default=str)[:2000]}")
    typer.echo(f"history: {len(run.history)} row(s); keys: {', '.join(keys)}")
