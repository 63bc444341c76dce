# Shared by the launchers: the repository root and how to start NPROC processes of a script.
# One node: NPROC processes (one per GPU). Several nodes: run the same command on every node with
#   NNODES=<nodes> NODE_RANK=<this node, 0..NNODES-1> MASTER_ADDR=<host of node 0> [MASTER_PORT=29500]
# (torchrun's static rendezvous); every node needs the data and a --checkpoint_path that all nodes see
# (a shared file system): a resume reads the checkpoint on every node.
# Ctrl-C (or SIGTERM) under torchrun: the ranks save a checkpoint, rank 0 says how to continue, and the
# launcher exits with 130 (143) without torchrun's own traceback of the signal.
# shellcheck shell=bash
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

without_signal_traceback() {  # stderr filter: drops torchrun's traceback of the signal it was stopped by
  trap '' INT TERM
  exec awk '
    /^Traceback \(most recent call last\):$/ { held = $0; holding = 1; next }
    holding && /^[ \t]/ { held = held "\n" $0; next }
    holding { holding = 0; if ($0 ~ /elastic\.multiprocessing\.api\.SignalException: /) next; print held }
    { print; fflush() }
    END { if (holding) print held }' >&2
}

run_torchrun() {  # run_torchrun ARGS...: torchrun, with a clean exit on Ctrl-C / SIGTERM
  local stopped=0 status=0
  trap 'stopped=130' INT
  trap 'stopped=143' TERM
  torchrun "$@" 2> >(without_signal_traceback) || status=$?
  wait
  if [ "$stopped" -ne 0 ]; then exit "$stopped"; fi
  exit "$status"
}

launch() {  # launch SCRIPT [args...]: plain python for one process, torchrun for several
  local script=$1; shift
  if [ "${NNODES:-1}" -gt 1 ]; then
    : "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0 (NNODES=$NNODES)}"
    : "${NODE_RANK:?set NODE_RANK to the index of this node, 0..$((NNODES - 1))}"
    run_torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="${NPROC:-1}" \
      --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}" "$ROOT/$script" "$@"
  fi
  if [ "${NPROC:-1}" -gt 1 ]; then
    run_torchrun --standalone --nproc_per_node="$NPROC" "$ROOT/$script" "$@"
  fi
  exec python "$ROOT/$script" "$@"
}
