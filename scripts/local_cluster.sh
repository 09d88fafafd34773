#!/usr/bin/env bash
# Start or stop a one-node Ray cluster for srum-ray on this machine, dashboard on 127.0.0.1.
#
#   scripts/local_cluster.sh start     # prints the dashboard address and the metrics URL
#   scripts/local_cluster.sh status
#   scripts/local_cluster.sh stop      # stops only this cluster (not other Rays here)
#
# Settings (environment): RAY_PORT (6379), DASHBOARD_PORT (8265), METRICS_PORT (8080),
# NUM_CPUS (all cores), METRICS_INTERVAL_MS (1000: how often Ray ships metrics to the
# endpoint; Ray's default is 10000), DRAIN_TIMEOUT_S (5: on stop, how long the node lets Serve
# replicas drain; Ray's default is 30), SRUM_RAY_TMP (/tmp/srum-ray-<uid>: Ray's temp and log
# directory for this cluster; keep it short, Ray puts unix sockets in it). Ray's other ports
# (dashboard agent, runtime-env agent, client server, dashboard self-metrics) are picked free
# at start, so this cluster can run beside another Ray on the same machine.
#
# Token authentication, which Ray 2.60 turns on by default, is turned OFF here
# (RAY_AUTH_MODE=disabled): the dashboard and job API listen on 127.0.0.1 only, but Ray
# rewrites a loopback node address to the machine's IP and its GCS and metrics ports listen
# on every interface, so use this only on a machine whose ports nobody else can reach. On a
# shared machine keep token auth (see cluster/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
METRICS_PORT=${METRICS_PORT:-8080}
NUM_CPUS=${NUM_CPUS:-$(nproc)}
METRICS_INTERVAL_MS=${METRICS_INTERVAL_MS:-1000}
DRAIN_TIMEOUT_S=${DRAIN_TIMEOUT_S:-5}
TMP_DIR=${SRUM_RAY_TMP:-/tmp/srum-ray-$(id -u)}
PID_FILE="$TMP_DIR/head.pid"
LOG_FILE="$TMP_DIR/head.log"

# the job's `python` is whatever the head's PATH finds first: put the project venv there
if [[ -x "$ROOT/.venv/bin/ray" ]]; then
    export PATH="$ROOT/.venv/bin:$PATH"
fi
command -v ray >/dev/null || { echo "ray not found: run scripts/setup.sh or activate your env" >&2; exit 1; }

free_port() {
    python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() { [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

# ready = the dashboard answers and so does the metrics endpoint, served by the node's
# dashboard agent, which the job API needs too (before it is up, a submit gets "No available
# agent to submit job")
head_ready() {
    python -c '
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/version", timeout=2)
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/metrics", timeout=2)
except Exception:
    sys.exit(1)
' "$DASHBOARD_PORT" "$METRICS_PORT"
}

print_addresses() {
    cat <<EOF
dashboard:  http://127.0.0.1:$DASHBOARD_PORT
metrics:    http://127.0.0.1:$METRICS_PORT/metrics   (srum series: ray_srum_*)
logs:       $TMP_DIR/session_latest/logs
submit:     RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:$DASHBOARD_PORT \\
              --runtime-env cluster/runtime_env.yaml --working-dir . -- \\
              python -m srum_ray.train --config configs/ray_tiny.yaml run.output_dir=$ROOT/runs
EOF
}

start() {
    if running; then
        echo "already running (pid $(cat "$PID_FILE"))"
        print_addresses
        return 0
    fi
    mkdir -p "$TMP_DIR"
    # --block keeps `ray start` in the foreground as the cluster's parent: stopping that one
    # process (SIGTERM) stops every process of this cluster and nothing else
    RAY_AUTH_MODE=disabled RAY_metrics_report_interval_ms=$METRICS_INTERVAL_MS \
    RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=$DRAIN_TIMEOUT_S DASHBOARD_METRIC_PORT=$(free_port) \
        setsid nohup ray start --head --block \
        --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 \
        --port "$RAY_PORT" --dashboard-port "$DASHBOARD_PORT" --metrics-export-port "$METRICS_PORT" \
        --dashboard-agent-listen-port "$(free_port)" --dashboard-agent-grpc-port "$(free_port)" \
        --runtime-env-agent-port "$(free_port)" --ray-client-server-port "$(free_port)" \
        --num-cpus "$NUM_CPUS" --temp-dir "$TMP_DIR" --disable-usage-stats \
        >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 120); do
        if head_ready; then
            echo "ray head up (pid $(cat "$PID_FILE"), $NUM_CPUS CPUs, auth disabled)"
            print_addresses
            return 0
        fi
        if ! running; then break; fi
        sleep 0.5
    done
    echo "ray head did not come up; last lines of $LOG_FILE:" >&2
    tail -n 20 "$LOG_FILE" >&2 || true
    stop >/dev/null 2>&1 || true
    return 1
}

stop() {
    if ! running; then
        echo "not running"
        rm -f "$PID_FILE"
        return 0
    fi
    local pid
    pid=$(cat "$PID_FILE")
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    # anything of this cluster still alive names its temp or session dir on its command line
    local left
    left=$(pgrep -f -- "${TMP_DIR}(/session_|[[:space:]]|\$)" || true)
    if [[ -n "$left" ]]; then
        echo "stopping leftover processes: $left"
        kill -TERM $left 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    echo "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        if running; then echo "running (pid $(cat "$PID_FILE"))"; print_addresses; else echo "not running"; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
