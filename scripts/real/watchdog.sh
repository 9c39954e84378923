#!/usr/bin/env bash
# Stops a test's servers when the test process that started them dies without stopping them
# (SIGKILL, a crash, a timeout), so no kube-apiserver, etcd or Kafka outlives its test.
#
#   watchdog.sh OWNER_PID DIR COMMAND...   while OWNER_PID lives, wait; then run COMMAND and
#                                          remove DIR. Started in the background by kube.sh and
#                                          kafka.sh; their `stop` kills it first (DIR/watchdog.pid).
set -uo pipefail
owner="$1"; dir="$2"; shift 2
while kill -0 "$owner" 2>/dev/null; do
  [ -d "$dir" ] || exit 0
  sleep 1
done
# The stop command must not stop this watchdog in turn.
WATCHDOG_PID=$$ "$@" >/dev/null 2>&1
rm -rf "$dir"
