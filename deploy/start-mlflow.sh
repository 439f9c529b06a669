#!/usr/bin/env bash
# Run the MLflow tracking server in the foreground: runs in PostgreSQL, artifacts proxied.
#
# Environment (defaults in brackets):
#   MLFLOW_BACKEND_STORE_URI      required, e.g. postgresql+psycopg2://USER:PASSWORD@HOST:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION  [./mlartifacts] where the server keeps artifacts (a path or s3://...);
#                                 clients upload and download through the server (mlflow-artifacts:/)
#   MLFLOW_DEFAULT_ARTIFACT_ROOT  [unset: mlflow-artifacts:/] artifact root of new experiments
#   MLFLOW_HOST                   [127.0.0.1] interface to bind (0.0.0.0 in a container)
#   MLFLOW_PORT                   [5000]
#   MLFLOW_WORKERS                [2] server worker processes
#   MLFLOW_ALLOWED_HOSTS          [MLflow's: localhost, private IPs] Host headers to accept, e.g.
#                                 "mlflow,mlflow:*,localhost:*,127.0.0.1:*" behind a compose name
#   MLFLOW_AUTH                   [none] "basic": username/password on every request except /health
#                                 (needs the mlflow[auth] extra, MLFLOW_FLASK_SERVER_SECRET_KEY and,
#                                 on first start, MLFLOW_AUTH_ADMIN_PASSWORD for user "admin").
#                                 Clients set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.
#   MLFLOW_AUTH_DATABASE_URI      [./basic_auth.db] where basic auth keeps its users, e.g.
#                                 postgresql+psycopg2://USER:PASSWORD@HOST:5432/mlflow_auth
#   MLFLOW_AUTH_DEFAULT_PERMISSION [READ] what a user may do on others' experiments: READ, EDIT,
#                                 MANAGE or NO_PERMISSIONS (ignored with MLFLOW_AUTH_CONFIG_PATH)
# Any arguments are passed on to `mlflow server`.
set -euo pipefail

die() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

[[ -n "${MLFLOW_BACKEND_STORE_URI:-}" ]] \
    || die "MLFLOW_BACKEND_STORE_URI is not set (e.g. postgresql+psycopg2://USER:PASSWORD@HOST:5432/mlflow)"

args=(
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
    --serve-artifacts
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-./mlartifacts}"
    --host "${MLFLOW_HOST:-127.0.0.1}"
    --port "${MLFLOW_PORT:-5000}"
    --workers "${MLFLOW_WORKERS:-2}"
)
[[ -z "${MLFLOW_DEFAULT_ARTIFACT_ROOT:-}" ]] || args+=(--default-artifact-root "$MLFLOW_DEFAULT_ARTIFACT_ROOT")
[[ -z "${MLFLOW_ALLOWED_HOSTS:-}" ]] || args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")

case "${MLFLOW_AUTH:-none}" in
    none | "") ;;
    basic)
        [[ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]] \
            || die "MLFLOW_AUTH=basic needs MLFLOW_FLASK_SERVER_SECRET_KEY (a long random string)"
        if [[ -n "${MLFLOW_AUTH_DATABASE_URI:-}" && -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
            # MLflow reads these settings from an .ini only; it may hold a password: 0600.
            config="$(mktemp -d)/basic_auth.ini"
            (
                umask 077
                printf '[mlflow]\ndefault_permission = %s\ndatabase_uri = %s\nadmin_username = admin\n' \
                    "${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}" "${MLFLOW_AUTH_DATABASE_URI//%/%%}" >"$config"
            )
            export MLFLOW_AUTH_CONFIG_PATH="$config"
        fi
        args+=(--app-name basic-auth)
        ;;
    *) die "MLFLOW_AUTH must be none or basic (got '$MLFLOW_AUTH')" ;;
esac

# exec: the server is this process, so `docker stop` / a test's kill reaches it directly.
exec "${MLFLOW_BIN:-mlflow}" server "${args[@]}" "$@"
