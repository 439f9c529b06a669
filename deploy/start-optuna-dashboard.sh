#!/usr/bin/env bash
# Run optuna-dashboard in the foreground on the Optuna storage gradsweep writes to.
#
# Environment (defaults in brackets):
#   GRADSWEEP_OPTUNA_STORAGE  required, e.g. postgresql+psycopg2://USER:PASSWORD@HOST:5432/optuna
#   OPTUNA_DASHBOARD_HOST     [127.0.0.1] interface to bind (0.0.0.0 in a container)
#   OPTUNA_DASHBOARD_PORT     [8080]
# optuna-dashboard has no authentication of its own: keep its port on 127.0.0.1 (or behind an
# authenticating proxy). Any arguments are passed on to `optuna-dashboard`.
set -euo pipefail

die() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

[[ -n "${GRADSWEEP_OPTUNA_STORAGE:-}" ]] \
    || die "GRADSWEEP_OPTUNA_STORAGE is not set (e.g. postgresql+psycopg2://USER:PASSWORD@HOST:5432/optuna)"

exec "${OPTUNA_DASHBOARD_BIN:-optuna-dashboard}" \
    --host "${OPTUNA_DASHBOARD_HOST:-127.0.0.1}" \
    --port "${OPTUNA_DASHBOARD_PORT:-8080}" \
    "$@" "$GRADSWEEP_OPTUNA_STORAGE"
