#!/usr/bin/env bash
# Two local processes, 4 CPU host devices each, train tests/gin/tiny_offline.gin with
# jax.distributed (a (8, 1) mesh over both): a multi-host run on one machine.
#
#   scripts/multihost_cpu.sh MODEL_DIR [extra gin flags...]
#
# Both processes train in MODEL_DIR, as the hosts of a real job would: each reads its seqio
# shard of the data (global batch = shard 0's rows, then shard 1's) and writes its shards of the
# checkpoints; process 0 writes metrics.jsonl, TensorBoard events, config.gin and the checkpoint
# JSON. Running it again with more TRAIN_STEPS resumes from the latest checkpoint. Process i logs
# to MODEL_DIR/process_<i>.log (appended).
#
# Environment: TRAIN_STEPS (default 2), CHECKPOINT_PERIOD (default TRAIN_STEPS), PORT (the
# coordinator's; default random), TIMEOUT (seconds, default 600). SIGTERM/SIGINT to this script
# go to both processes: they agree on a step, save a checkpoint there and exit 143. Exit status:
# 0 when both processes succeed, else the first failing process's status (the other is killed
# if it has not ended 30 s later); 124 after TIMEOUT (SIGTERM to both, SIGKILL 60 s later).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 MODEL_DIR [extra gin flags...]" >&2
  exit 2
fi
MODEL_DIR=$(mkdir -p "$1" && cd "$1" && pwd)
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
STEPS=${TRAIN_STEPS:-2}
PERIOD=${CHECKPOINT_PERIOD:-$STEPS}
TIMEOUT=${TIMEOUT:-600}

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
for i in 0 1; do
  XLA_FLAGS="--xla_force_host_platform_device_count=4" JAX_PLATFORMS=cpu \
    "$PYTHON" -m flix.train \
      --gin_search_paths="$ROOT/tests/gin" --gin_file="$ROOT/tests/gin/tiny_offline.gin" \
      --gin.MODEL_DIR="'$MODEL_DIR'" \
      --gin.initialize_distributed.coordinator_address="'localhost:$PORT'" \
      --gin.initialize_distributed.num_processes=2 \
      --gin.initialize_distributed.process_id=$i \
      --gin.TRAIN_STEPS="$STEPS" --gin.CHECKPOINT_PERIOD="$PERIOD" \
      "$@" >> "$MODEL_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done

codes=("" "")
status=0
failed_at=""
timed_out=""
start=$SECONDS
while [[ -z ${codes[0]} || -z ${codes[1]} ]]; do
  for i in 0 1; do
    if [[ -z ${codes[$i]} ]] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
      code=0
      wait "${pids[$i]}" || code=$?
      codes[$i]=$code
      if (( code != 0 && status == 0 )); then
        status=$code
        failed_at=$SECONDS
        echo "process $i exited with status $code; last lines of $MODEL_DIR/process_$i.log:" >&2
        tail -n 20 "$MODEL_DIR/process_$i.log" >&2
      fi
    fi
  done
  if [[ -n $failed_at ]] && (( SECONDS - failed_at > 30 )); then
    kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  if [[ -z $timed_out ]] && (( SECONDS - start > TIMEOUT )); then
    echo "timed out after ${TIMEOUT}s; stopping both processes" >&2
    timed_out=$SECONDS
    kill -TERM "${pids[@]}" 2>/dev/null || true
  fi
  if [[ -n $timed_out ]] && (( SECONDS - timed_out > 60 )); then
    kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  sleep 0.5
done
if [[ -n $timed_out ]]; then
  exit 124
fi
exit $status
