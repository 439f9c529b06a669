#!/usr/bin/env bash
# Start a Ray worker node that joins the head at RAY_HEAD_ADDRESS, with token authentication.
#
# Environment (defaults in brackets):
#   RAY_AUTH_MODE          must be "token"
#   RAY_AUTH_TOKEN         the same secret as the head's
#   RAY_HEAD_ADDRESS       [127.0.0.1:6379] the head's GCS, HOST:PORT
#   RAY_NODE_IP_ADDRESS    [127.0.0.1] address other nodes reach this one on; "auto" lets Ray pick
#   RAY_NUM_CPUS, RAY_NUM_GPUS  [detected] resources this node offers to trials
#   RAY_TEMP_DIR           [Ray's default, /tmp/ray]
#   RAY_BLOCK              [false] true: stay in the foreground (compose, tests)
# Any arguments are passed on to `ray start` (e.g. --node-manager-port 6390).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/ray-common.sh
source "$here/ray-common.sh"

require_token_auth
args=(--address "${RAY_HEAD_ADDRESS:-127.0.0.1:6379}" --disable-usage-stats)
common_node_args
exec "$RAY_BIN" start "${args[@]}" "$@"
