"""The study's parent run in MLflow: the resolved config as params and artifact, where the
study's records live, and a name the UI's runs table shows whole. Its trials' child runs are
:mod:`search.tracking`'s."""

from __future__ import annotations

import json
import time
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Param

from search.environment import Locations, redact
from search.journal import MAX_PARAMS
from search.schema import (
    NOTE_TAG,
    OBJECTIVES_TAG,
    OPTUNA_STORAGE_TAG,
    OUTPUT_DIR_TAG,
    ROLE_STUDY,
    ROLE_TAG,
    STUDY_TAG,
    objectives_tag,
)
from spaces import StudyConfig


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Flatten a nested config into ``a.b.c`` -> string, for MLflow params."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list | tuple) else str(value)}


def public_config(config: StudyConfig) -> dict[str, Any]:
    """The config as logged on the parent run: store URLs with their passwords redacted."""
    dump = config.model_dump(mode="json")
    dump["optuna_storage"] = redact(dump.get("optuna_storage"))
    dump["tracking"]["uri"] = redact(dump["tracking"].get("uri"))
    return dump


def parent_run_name(study_name: str, config: StudyConfig) -> str:
    """What the UI's runs table shows for a study: its config's name and when it started, short
    enough not to be cut (``quick 11-29 18:03``); a name chosen with ``--study`` as it is. The
    study's full name is its tag and description: commands find studies by the tag."""
    stamp = study_name.removeprefix(f"{config.name}-")
    if stamp != study_name and len(stamp) >= 15 and stamp[8] == "-":  # YYYYmmdd-HHMMSS
        return f"{config.name} {stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}"
    return study_name


def start_parent_run(
    client: MlflowClient,
    experiment_id: str,
    study_name: str,
    config: StudyConfig,
    where: Locations,
) -> str:
    """Create the study's parent run (RUNNING) with the resolved config as params and artifact,
    and where its records live (resume reads them back)."""
    tags = {
        STUDY_TAG: study_name,
        ROLE_TAG: ROLE_STUDY,
        OUTPUT_DIR_TAG: str(where.output),
        OPTUNA_STORAGE_TAG: redact(where.optuna_storage) or "",
        "searcher": config.searcher.name,
        "scheduler": config.scheduler.name,
        "dataset": config.data.name,
        "design": str(bool(config.design)).lower(),
    }
    if config.multi_objective:
        tags[OBJECTIVES_TAG] = objectives_tag(config.objectives)
    about = f": {config.description}" if config.description else ""
    tags[NOTE_TAG] = f"study {study_name}{about}"
    name = parent_run_name(study_name, config)
    run = client.create_run(
        experiment_id, run_name=name, tags=tags, start_time=int(time.time() * 1000)
    )
    run_id = run.info.run_id
    public = public_config(config)
    params = [Param(k, v[:6000]) for k, v in flatten("", public).items()]
    for i in range(0, len(params), MAX_PARAMS):
        client.log_batch(run_id, params=params[i : i + MAX_PARAMS])
    client.log_text(run_id, json.dumps(public, indent=2), "config.json")
    return run_id
