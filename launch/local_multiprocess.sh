#!/usr/bin/env bash
# Runs N cooperating JAX processes on this machine (127.0.0.1), each with its own simulated CPU devices:
# the multi-host code path without a cluster.
#
#   launch/local_multiprocess.sh 2 -- python -m vitjax.main --config=configs/quickstart.py --workdir=/tmp/mh
#
# Environment: DEVICES_PER_PROCESS (default 2), PORT (default: a free one). Exits non-zero if any process fails.
set -euo pipefail
num_processes=${1:?usage: $0 NUM_PROCESSES -- COMMAND...}
shift
[ "${1:-}" = "--" ] && shift
devices=${DEVICES_PER_PROCESS:-2}
port=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices} ${XLA_FLAGS:-}" JAX_PLATFORMS=cpu \
    "$@" --coordinator_address="127.0.0.1:${port}" --num_processes="${num_processes}" --process_id="${i}" \
    > >(sed -u "s/^/[process ${i}] /") 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "${pid}" || status=$?
done
exit "${status}"
