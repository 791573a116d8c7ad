#!/usr/bin/env bash
# Start N data-parallel ranks of a lesionflow command on this machine, as torchrun does:
#   scripts/launch_local.sh 2 ./build/lesionflow train --data cache/ham64 ... --out runs/x
# Every rank gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
# MASTER_ADDR=127.0.0.1, MASTER_PORT = a free port unless set); lesionflow splits the cores
# among the local ranks unless --threads is given. Rank 0 prints progress and results; the
# other ranks print warnings and errors only, prefixed with their rank.
# When a rank fails, the others notice on their next collective and stop with an error; ranks
# still running 60 s later are terminated. Ctrl-C / SIGTERM reach every rank (they checkpoint
# and stop together). The exit code is the first failing rank's, else 0.
set -uo pipefail
if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
N=$1
shift
port=${MASTER_PORT:-}
if [[ -z $port ]]; then
  port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
         echo $((20000 + RANDOM % 20000)))
fi
export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=$port WORLD_SIZE=$N LOCAL_WORLD_SIZE=$N
pids=()
for ((r = 0; r < N; r++)); do
  if ((r == 0)); then
    RANK=$r LOCAL_RANK=$r "$@" &
  else
    RANK=$r LOCAL_RANK=$r "$@" > >(sed -u "s/^/[rank $r] /") 2> >(sed -u "s/^/[rank $r] /" >&2) &
  fi
  pids+=($!)
done
forward() { kill -"$1" "${pids[@]}" 2>/dev/null; }
trap 'forward INT' INT
trap 'forward TERM' TERM
rc=0
watchdog=""
while ((${#pids[@]} > 0)); do
  done_pid=""
  wait -n -p done_pid "${pids[@]}"
  code=$?
  [[ -z ${done_pid:-} ]] && continue  # interrupted by a trapped signal: wait again
  rest=()
  for p in "${pids[@]}"; do [[ $p != "$done_pid" ]] && rest+=("$p"); done
  pids=("${rest[@]}")
  if ((code != 0 && rc == 0)); then
    rc=$code
    if ((${#pids[@]} > 0)); then
      echo "launch_local: a rank exited with code $code; the others get 60 s to stop" >&2
      ( trap 'exit 0' TERM; sleep 60 & wait $!; kill -TERM "${pids[@]}" ) >/dev/null 2>&1 &
      watchdog=$!
    fi
  fi
done
[[ -n $watchdog ]] && kill "$watchdog" 2>/dev/null
exit $rc
