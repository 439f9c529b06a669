"""Commands for studies run as Ray jobs on a cluster: submit, resubmit, jobs, logs, stop."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console

from search.cli.options import (
    ConfigArg,
    HeadTrackingUri,
    JobAddress,
    JobArg,
    NewStudy,
    Overrides,
    Wait,
)
from search.cli.terminal import app, err, fail, out, quiet
from spaces import ConfigError, load_config

PANEL = "Studies on a cluster (Ray jobs)"


def _follow_up(study: str, job_id: str, address: str) -> None:
    out.print(
        f"job [bold]{job_id}[/] - study [bold]{study}[/]\n"
        f"  follow:    gradsweep logs {job_id} --follow --address {address}\n"
        f"  jobs:      gradsweep jobs --address {address}\n"
        f"  stop:      gradsweep stop {job_id} --address {address}\n"
        f"  resume:    gradsweep resubmit --study {study} --address {address}",
        highlight=False,
        soft_wrap=True,
    )


@contextlib.contextmanager
def _still_running(job_id: str, address: str) -> Iterator[None]:
    """Ctrl+C while following a job stops the following, not the job: say so."""
    try:
        yield
    except KeyboardInterrupt:
        sys.stdout.flush()
        err.print(
            f"stopped following; job {job_id} goes on (gradsweep stop {job_id} --address "
            f"{address} stops it)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=130) from None


def _await_job(client: object, job_id: str, address: str) -> None:
    """Follow the job's log to its end; a job that did not succeed is one line, exit 1."""
    from search import jobs

    with jobs.talking_to(address), _still_running(job_id, address):
        status = jobs.follow(client, job_id, lambda text: sys.stdout.write(text))
        sys.stdout.flush()
        if status != "SUCCEEDED":
            message = client.get_job_info(job_id).message or ""  # type: ignore[attr-defined]
            err.print(
                f"[bold red]error:[/] job {job_id} ended {status}: {' '.join(message.split())}",
                soft_wrap=True,
                highlight=False,
            )
            raise typer.Exit(code=1)


@app.command(rich_help_panel=PANEL)
def submit(
    config: ConfigArg,
    set_: Overrides = None,
    address: JobAddress = None,
    tracking_uri: HeadTrackingUri = None,
    study: NewStudy = None,
    output_dir: Annotated[
        str | None,
        typer.Option(help="Output dir on the cluster, seen by every node (default: /app/OUTPUT)."),
    ] = None,
    wait: Wait = False,
) -> None:
    """Run a search on a Ray cluster as a job: checked here, run there, this machine free."""
    try:
        cfg = load_config(config, list(set_ or []))
    except ConfigError as exc:
        raise fail(str(exc)) from None
    quiet()
    from search import jobs
    from search.errors import UserError

    name = study or jobs.default_study_name(cfg)
    try:
        jobs.check_study_name(name)
        with jobs.session(address) as (url, client):
            job_id = jobs.submit_study(
                client, cfg, study=name, tracking_uri=tracking_uri, output_dir=output_dir
            )
        _follow_up(name, job_id, url)
        if wait:
            _await_job(client, job_id, url)
    except UserError as exc:
        raise fail(str(exc)) from None


@app.command(rich_help_panel=PANEL)
def resubmit(
    study: Annotated[str, typer.Option(help="The study to finish, as 'gradsweep submit' printed.")],
    address: JobAddress = None,
    tracking_uri: HeadTrackingUri = None,
    wait: Wait = False,
) -> None:
    """Finish a stopped study on the cluster: 'gradsweep resume' as a job."""
    quiet()
    from search import jobs
    from search.errors import UserError

    try:
        with jobs.session(address) as (url, client):
            previous = [r for r in jobs.list_jobs(client) if r.study == study and "/" in r.trials]
            total = previous[0].trials.rpartition("/")[2] if previous else ""  # for `jobs`
            job_id = jobs.submit_resume(client, study, tracking_uri=tracking_uri, num_samples=total)
        _follow_up(study, job_id, url)
        if wait:
            _await_job(client, job_id, url)
    except UserError as exc:
        raise fail(str(exc)) from None


@app.command("jobs", rich_help_panel=PANEL)
def list_jobs(
    address: JobAddress = None,
    all_: Annotated[bool, typer.Option("--all", help="Other Ray jobs too.")] = False,
) -> None:
    """List the studies submitted to the cluster: job id, study, status, start, trials done."""
    quiet()
    from rich.measure import Measurement
    from rich.table import Table

    from search import jobs
    from search.errors import UserError

    try:
        with jobs.session(address) as (url, client):
            rows = jobs.list_jobs(client, everything=all_)
    except UserError as exc:
        raise fail(str(exc)) from None
    if not rows:
        out.print(f"no gradsweep jobs on {url}", highlight=False)
        return
    table = Table("job id", "study", "status", "started", "trials done", box=None)
    for row in rows:
        table.add_row(row.job_id, row.study, row.status, row.started, row.trials)
    # Whole ids and names, wider than the terminal if need be: they are copied into commands.
    need = Measurement.get(out, out.options.update_width(1000), table).maximum
    (out if need <= out.width else Console(width=need)).print(table, highlight=False)


@app.command(rich_help_panel=PANEL)
def logs(
    job: JobArg,
    address: JobAddress = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until it ends.")
    ] = False,
) -> None:
    """Print a job's log (the study's progress, leaderboard and where its records are)."""
    quiet()
    from search import jobs
    from search.errors import UserError

    try:
        with jobs.session(address) as (url, client):
            job_id = jobs.find_job(client, job).submission_id
            if follow:
                with _still_running(job_id, url):
                    jobs.follow(client, job_id, lambda text: sys.stdout.write(text))
            else:
                sys.stdout.write(client.get_job_logs(job_id))
    except UserError as exc:
        raise fail(str(exc)) from None


@app.command(rich_help_panel=PANEL)
def stop(
    job: JobArg,
    address: JobAddress = None,
) -> None:
    """Stop a job as Ctrl+C stops a study: trials closed, resumable with 'gradsweep resubmit'."""
    quiet()
    from search import jobs
    from search.errors import UserError

    try:
        with jobs.session(address) as (url, client):
            info = jobs.find_job(client, job)
            job_id, study = info.submission_id, (info.metadata or {}).get(jobs.STUDY_KEY, "-")
            if info.status.is_terminal():
                raise UserError(f"job {job_id} has ended already ({info.status})")
            out.print(f"stopping job {job_id} (study {study}) ...", highlight=False)
            status = jobs.stop(client, job_id)
    except UserError as exc:
        raise fail(str(exc)) from None
    out.print(
        f"job {job_id} {status}; finish the study with:  "
        f"gradsweep resubmit --study {study} --address {url}",
        highlight=False,
        soft_wrap=True,
    )
