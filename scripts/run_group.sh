#!/usr/bin/env bash
# run_group.sh CMD [ARGS...]: run a long-lived server (dagster dev, mlflow ui) so that Ctrl-C or a SIGTERM
# stops it and every process it started.
#
# `dagster dev` spawns a webserver, a daemon and code servers; a SIGTERM to `make` reached none of them and
# a SIGINT left five processes behind (issue 13). Here the command runs in its own process group (set -m),
# and INT/TERM/HUP to this script go to that whole group; what is still alive after GRACE_S seconds
# (default 20) gets SIGKILL.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }
set -m
"$@" &
child=$!
set +m
stop() {
  kill -"$1" -- "-$child" 2>/dev/null
  for _ in $(seq 1 $((${GRACE_S:-20} * 10))); do
    kill -0 -- "-$child" 2>/dev/null || exit 0
    sleep 0.1
  done
  kill -KILL -- "-$child" 2>/dev/null
  exit 1
}
trap 'stop INT' INT
trap 'stop TERM' TERM HUP
wait "$child"
status=$?
kill -TERM -- "-$child" 2>/dev/null  # the command ended on its own: take its leftovers with it
exit "$status"
