# Shared by the node scripts in this directory (sourced, not run).

ORCH_PYTHON="${ORCH_PYTHON:-python3}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
# Token authentication stays on: every node and client presents the cluster's token.
export RAY_AUTH_MODE=token

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 2
}

# The token comes from the environment or a file (a compose secret), never from the image.
require_token() {
    if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
        return
    fi
    if [ -n "${RAY_AUTH_TOKEN_PATH:-}" ]; then
        [ -s "$RAY_AUTH_TOKEN_PATH" ] || die "RAY_AUTH_TOKEN_PATH: no token in '$RAY_AUTH_TOKEN_PATH' (deploy/make-token writes one)"
        return
    fi
    [ -s "$HOME/.ray/auth_token" ] || die "no Ray auth token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (deploy/make-token writes one)"
}

# --node-ip-address: 127.0.0.1 unless ORCH_NODE_IP says otherwise; "auto" lets Ray pick the
# machine's address (in a container: its address on the compose network).
node_ip_args() {
    local ip="${ORCH_NODE_IP:-127.0.0.1}"
    if [ "$ip" != "auto" ]; then
        args+=(--node-ip-address "$ip")
    fi
}

resource_args() {
    if [ -n "${ORCH_NUM_CPUS:-}" ]; then args+=(--num-cpus "$ORCH_NUM_CPUS"); fi
    if [ -n "${ORCH_NUM_GPUS:-}" ]; then args+=(--num-gpus "$ORCH_NUM_GPUS"); fi
    if [ -n "${ORCH_RESOURCES:-}" ]; then args+=(--resources "$ORCH_RESOURCES"); fi
    # Nodes that share a machine each need their own (their runtime environments would collide).
    if [ -n "${ORCH_TEMP_DIR:-}" ]; then args+=(--temp-dir "$ORCH_TEMP_DIR"); fi
}

ray_start() {
    # shellcheck disable=SC2086  # ORCH_RAY_ARGS is a list of words on purpose
    exec "$ORCH_PYTHON" -m orchestrator.cluster.nodes ray-start "${args[@]}" ${ORCH_RAY_ARGS:-}
}
