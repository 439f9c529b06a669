# Sourced by start-head.sh and start-worker.sh: token-auth check and per-node flags.
# shellcheck shell=bash

# `ray` next to the Python that runs gradsweep (a venv, the image), else the one on PATH.
RAY_BIN="${RAY_BIN:-ray}"

die() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

is_true() {
    case "${1,,}" in
        1 | true | yes | on) return 0 ;;
        0 | false | no | off | "") return 1 ;;
        *) die "expected true or false, got '$1'" ;;
    esac
}

require_token_auth() {
    [[ "${RAY_AUTH_MODE:-}" == "token" ]] \
        || die "RAY_AUTH_MODE must be 'token' (got '${RAY_AUTH_MODE:-}'): an open Ray port runs anyone's code"
    [[ -n "${RAY_AUTH_TOKEN:-}" ]] \
        || die "RAY_AUTH_TOKEN is empty; generate one: python3 -c 'import secrets; print(secrets.token_hex(32))'"
    (( ${#RAY_AUTH_TOKEN} >= 32 )) || die "RAY_AUTH_TOKEN is shorter than 32 characters"
    export RAY_AUTH_MODE RAY_AUTH_TOKEN
}

# Appends to the caller's `args` array.
common_node_args() {
    local ip="${RAY_NODE_IP_ADDRESS:-127.0.0.1}"
    [[ "$ip" == "auto" ]] || args+=(--node-ip-address "$ip")
    [[ -z "${RAY_NUM_CPUS:-}" ]] || args+=(--num-cpus "$RAY_NUM_CPUS")
    [[ -z "${RAY_NUM_GPUS:-}" ]] || args+=(--num-gpus "$RAY_NUM_GPUS")
    [[ -z "${RAY_TEMP_DIR:-}" ]] || args+=(--temp-dir "$RAY_TEMP_DIR")
    if is_true "${RAY_BLOCK:-false}"; then
        args+=(--block)
    fi
}
