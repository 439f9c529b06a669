"""Arguments and options several commands take, declared once so their names and help agree."""

from __future__ import annotations

from typing import Annotated

import typer

ConfigArg = Annotated[str, typer.Argument(help="A YAML study config, or a preset name.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set training.epochs=3 (repeatable)."),
]
NewStudy = Annotated[str | None, typer.Option(help="Study name (default: NAME-timestamp).")]
#: A finished or running study's tracking store, read from this machine.
StudyTrackingUri = Annotated[
    str | None, typer.Option(help="MLflow tracking URI of the study (default: the default run's).")
]
RayAddress = Annotated[
    str | None,
    typer.Option(help="Ray cluster (default: the warm Ray of 'gradsweep ray start', else local)."),
]
#: The tracking store as the cluster's head sees it (it runs the study).
HeadTrackingUri = Annotated[
    str | None, typer.Option(help="MLflow tracking URI as the head sees it.")
]
JobAddress = Annotated[
    str | None,
    typer.Option(
        "--address", help="The head's job server, http://HEAD:8265 (default: RAY_ADDRESS)."
    ),
]
JobArg = Annotated[str, typer.Argument(help="A job id, or a study name (its newest job).")]
Wait = Annotated[bool, typer.Option(help="Follow the log to the end; exit 1 unless it succeeded.")]
