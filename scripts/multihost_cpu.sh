#!/usr/bin/env bash
# Two local processes, 4 CPU host devices each, train tests/gin/tiny_offline.gin with
# jax.distributed (a (8, 1) mesh over both): a multi-host run on one machine.
#
#   scripts/multihost_cpu.sh MODEL_DIR [extra gin flags...]
#
# Process i trains in MODEL_DIR/process_<i> (metrics.jsonl, config.gin) and logs to
# MODEL_DIR/process_<i>.log. The global batch equals a 1-process run's (flix.training.loop.
# train_batches), so the losses match it.
#
# Checkpoints are not multi-host ready yet: flix.checkpoints writes each checkpoint through a
# per-process temporary directory, and orbax's multi-process save waits for all processes on one
# path, so the final save never completes. The script therefore sets CHECKPOINT_PERIOD past the
# last step, waits until process 0 has logged the last step (TRAIN_STEPS, default 2), then stops
# both processes (SIGKILL). Exits non-zero if a process fails first. PORT sets the coordinator
# port.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 MODEL_DIR [extra gin flags...]" >&2
  exit 2
fi
MODEL_DIR=$1
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
STEPS=${TRAIN_STEPS:-2}
TIMEOUT=${TIMEOUT:-600}
mkdir -p "$MODEL_DIR"

pids=()
for i in 0 1; do
  XLA_FLAGS="--xla_force_host_platform_device_count=4" JAX_PLATFORMS=cpu \
    "$PYTHON" -m flix.train \
      --gin_search_paths="$ROOT/tests/gin" --gin_file="$ROOT/tests/gin/tiny_offline.gin" \
      --gin.MODEL_DIR="'$MODEL_DIR/process_$i'" \
      --gin.initialize_distributed.coordinator_address="'localhost:$PORT'" \
      --gin.initialize_distributed.num_processes=2 \
      --gin.initialize_distributed.process_id=$i \
      --gin.TRAIN_STEPS=$STEPS --gin.CHECKPOINT_PERIOD=$((STEPS + 1000)) \
      "$@" > "$MODEL_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done

metrics="$MODEL_DIR/process_0/metrics.jsonl"
start=$SECONDS
status=0
while ! grep -qs "\"step\": $STEPS," "$metrics"; do
  for i in 0 1; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "process $i ended before step $STEPS; last lines of $MODEL_DIR/process_$i.log:" >&2
      tail -n 20 "$MODEL_DIR/process_$i.log" >&2
      status=1
    fi
  done
  if (( status || SECONDS - start > TIMEOUT )); then
    status=1
    break
  fi
  sleep 0.5
done
kill -9 "${pids[@]}" 2>/dev/null || true
wait "${pids[@]}" 2>/dev/null || true
exit $status
