#!/usr/bin/env bash
# Start the Ray head node (GCS, dashboard, raylet) with token authentication.
#
# Environment (defaults in brackets):
#   RAY_AUTH_MODE          must be "token"
#   RAY_AUTH_TOKEN         the cluster's shared secret; the same on every node and every driver
#   RAY_NODE_IP_ADDRESS    [127.0.0.1] address other nodes reach this one on; "auto" lets Ray pick
#                          (Ray advertises 127.0.0.1 as this machine's own reachable address)
#   RAY_HEAD_PORT          [6379] GCS port; workers join HEAD_IP:RAY_HEAD_PORT
#   RAY_INCLUDE_DASHBOARD  [true] the dashboard needs ray[default] (the image has it)
#   RAY_DASHBOARD_HOST     [127.0.0.1] interface the dashboard binds to (0.0.0.0 in a container)
#   RAY_DASHBOARD_PORT     [8265]
#   RAY_NUM_CPUS, RAY_NUM_GPUS  [detected] resources this node offers to trials
#   RAY_TEMP_DIR           [Ray's default, /tmp/ray] sessions, logs, sockets
#   RAY_BLOCK              [false] true: stay in the foreground (compose, tests); the command's
#                          process group then holds every Ray process of this node
# Any arguments are passed on to `ray start` (e.g. --node-manager-port 6380).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/ray-common.sh
source "$here/ray-common.sh"

require_token_auth
args=(--head --port "${RAY_HEAD_PORT:-6379}" --disable-usage-stats)
args+=(--include-dashboard "${RAY_INCLUDE_DASHBOARD:-true}")
args+=(--dashboard-host "${RAY_DASHBOARD_HOST:-127.0.0.1}" --dashboard-port "${RAY_DASHBOARD_PORT:-8265}")
common_node_args
exec "$RAY_BIN" start "${args[@]}" "$@"
