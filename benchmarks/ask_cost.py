"""Ask cost: the driver's CPU, wall and SQL statements per Optuna ask and tell (issue 21).

One fresh PostgreSQL database (``scale.database``) holds a study of ``--trials`` COMPLETE trials
(drawn at random through gradsweep's define-by-run space, added in bulk) and ``--running`` trials
asked by gradsweep's own searcher (``search.tuner.make_searcher``: the sampler
``searcher.*`` configures, the storage ``search.stores.optuna_storage`` opens). Then, ``--asks``
times: the oldest running trial is told COMPLETE (``on_trial_complete``) and a new one is asked
(``suggest``: Optuna's ask and the define-by-run space's suggestions), as Tune's driver does.

Printed per ask and per tell: CPU and wall (ms, medians and means), SQL statements and commits,
and which storage method issued the statements, from which Optuna (or gradsweep) caller. The
asks run under ``search.trials.start_up_frozen``, as the driver's ``Tuner.fit`` does
(``--unfrozen``: without it); a full garbage collection lands in whichever ask set it off, which
is why the mean can sit well above the median.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python benchmarks/ask_cost.py
--trials 500 --trials 2000`` (about a minute each on 2 cores); ``--searcher-json
'{"constant_liar": false}'`` for other TPE settings. Repeat ``--searcher-json`` to compare
settings: each runs on every ``--trials`` (a fresh database each), and a table of CPU per ask
closes the output. Plain TPE against a capped history (``searcher.history``, spaces/tpe.py),
~10 min on 2 cores: ``PYTHONPATH=. .venv/bin/python benchmarks/ask_cost.py --trials 1000
--trials 5000 --trials 10000 --searcher-json '{}' --searcher-json '{"history": 1000}'``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import functools
import json
import os
import pstats
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from common import quiet_libraries, study_dict
from scale import database
from sqlalchemy import event

from search.environment import with_driver
from search.schema import OBJECTIVE
from search.stores import optuna_storage
from search.trials import start_up_frozen
from search.tuner import make_searcher
from spaces import define_space, load_config

#: The storage layer: Optuna's storages and the searcher's wrapper of them.
STORAGES = (f"{os.sep}optuna{os.sep}storages{os.sep}", f"{os.sep}search{os.sep}ask_storage.py")


def origin() -> tuple[str, str]:
    """(caller, storage method) of the SQL statement being executed: the outermost frame in
    ``optuna/storages`` and the frame that called it."""
    frame, method = sys._getframe(2), None
    while frame is not None:
        where = frame.f_code.co_filename
        if any(layer in where for layer in STORAGES):
            method = frame
        elif method is not None and not where.endswith("contextlib.py"):  # a session's end
            return frame.f_code.co_qualname, method.f_code.co_qualname
        frame = frame.f_back
    return "?", method.f_code.co_qualname if method else "?"


class Statements:
    """SQL statements and commits on an engine, and where the statements came from."""

    def __init__(self, engine: Any) -> None:
        self.statements = self.commits = 0
        self.origins: collections.Counter[tuple[str, str]] = collections.Counter()
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, *args: Any) -> None:
        self.statements += 1
        self.origins[origin()] += 1

    def _commit(self, *args: Any) -> None:
        self.commits += 1


@functools.cache
def drawn(trials: int) -> list[optuna.trial.FrozenTrial]:
    """``trials`` COMPLETE trials with random parameters of the space and random values (the
    same for every setting measured)."""
    config = load_config(study_dict(trials, 3, "/tmp/unused"), [])
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1), direction="maximize")
    space = define_space(config)
    frozen = []
    for _ in range(trials):
        trial = draw.ask()
        space(trial)
        frozen.append(draw.tell(trial, random.random()))
    return frozen


def measure(args: argparse.Namespace, trials: int, searcher_json: str) -> dict[str, Any]:
    name = "ask_cost"
    study = study_dict(trials, 3, "/tmp/unused")
    study["searcher"] = {"name": "tpe", "seed": 0, **json.loads(searcher_json)}
    config = load_config(study, [])
    with database(f"gs_ask_{os.getpid()}") as plain:
        url = with_driver(plain)  # psycopg2, as a study opens it
        filled = optuna.create_study(storage=url, study_name=name, direction="maximize")
        filled.add_trials(drawn(trials))
        storage = optuna_storage(url)
        searcher = make_searcher(config, study_name=name, storage=storage)
        with contextlib.nullcontext() if args.unfrozen else start_up_frozen():  # as run_trials
            result = asks(args, config, searcher, Statements(storage.engine))
        storage.engine.dispose()
    return result


def asks(args: argparse.Namespace, config: Any, searcher: Any, sql: Statements) -> dict[str, Any]:
    """``--running`` trials asked, then ``--asks`` times one told and one asked, timed."""
    running = collections.deque(f"r{i}" for i in range(args.running))
    for trial_id in running:
        searcher.suggest(trial_id)
    rows: dict[str, list[tuple[float, float, int, int]]] = {"ask": [], "tell": []}

    profile = cProfile.Profile() if args.profile else None

    def timed(kind: str, call: Any, *a: Any) -> None:
        s0, c0 = sql.statements, sql.commits
        t0, p0 = time.perf_counter(), time.process_time()
        if profile is not None and kind == "ask":
            profile.runcall(call, *a)
        else:
            call(*a)
        cpu, wall = time.process_time() - p0, time.perf_counter() - t0
        rows[kind].append((cpu * 1e3, wall * 1e3, sql.statements - s0, sql.commits - c0))

    result = {OBJECTIVE: 0.0, "epoch": config.training.epochs}
    sql.origins.clear()
    tell_origins = collections.Counter[tuple[str, str]]()
    for i in range(args.asks):
        before = sql.origins.copy()
        result[OBJECTIVE] = random.random()
        timed("tell", searcher.on_trial_complete, running.popleft(), dict(result))
        tell_origins += sql.origins - before
        running.append(f"n{i}")
        timed("ask", searcher.suggest, running[-1])
    ask_origins = sql.origins - tell_origins
    if profile is not None:
        stats = pstats.Stats(profile).sort_stats("tottime")
        print(f"\nprofile of the {args.asks} asks (by own time; the whole dump: {args.profile})")
        stats.print_stats(25)
        stats.dump_stats(args.profile)
    return {"rows": rows, "ask_origins": ask_origins, "tell_origins": tell_origins}


def show(args: argparse.Namespace, trials: int, searcher_json: str, r: dict[str, Any]) -> None:
    print(
        f"\n{trials} COMPLETE + {args.running} RUNNING trials, TPE {searcher_json}, "
        f"{args.asks} asks (load average {os.getloadavg()[0]:.1f})"
    )
    for kind in ("ask", "tell"):
        rows = r["rows"][kind]
        cpu, wall, stmts, commits = (list(c) for c in zip(*rows, strict=True))
        print(
            f"  {kind:4s}: CPU {statistics.median(cpu):5.1f} ms median, "
            f"{statistics.fmean(cpu):5.1f} mean | wall {statistics.median(wall):5.1f} median, "
            f"{statistics.fmean(wall):5.1f} mean | {statistics.fmean(stmts):5.1f} statements, "
            f"{statistics.fmean(commits):4.1f} commits"
        )
        for (caller, method), n in r[f"{kind}_origins"].most_common():
            print(f"      {n / len(rows):5.1f}  {method:42s} <- {caller}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, action="append", help="COMPLETE trials (repeat)")
    parser.add_argument("--running", type=int, default=32)
    parser.add_argument("--asks", type=int, default=40)
    parser.add_argument(
        "--searcher-json", action="append", help="TPE settings, as in a config (repeat)"
    )
    parser.add_argument("--profile", type=Path, help="cProfile the asks, dumped here")
    parser.add_argument(
        "--unfrozen", action="store_true", help="without run_trials' gc.freeze (as before it)"
    )
    args = parser.parse_args()
    import ray  # noqa: F401  (quiet_libraries sets the levels ray's import would reset)

    quiet_libraries()
    random.seed(0)
    print(f"optuna {optuna.__version__}; load average {os.getloadavg()[0]:.1f} before")
    settings = args.searcher_json or ["{}"]
    cpu: dict[tuple[int, str], float] = {}
    for trials in args.trials or [500]:
        for searcher_json in settings:
            r = measure(args, trials, searcher_json)
            show(args, trials, searcher_json, r)
            cpu[trials, searcher_json] = statistics.median(row[0] for row in r["rows"]["ask"])
    print(f"\nCPU per ask, median ms (load average {os.getloadavg()[0]:.1f} at the end)")
    print(f"  {'trials':>7s}  " + "  ".join(f"{s:>20s}" for s in settings))
    for trials in args.trials or [500]:
        print(f"  {trials:7d}  " + "  ".join(f"{cpu[trials, s]:20.1f}" for s in settings))


if __name__ == "__main__":
    main()
