# Shared by the launchers: the repository root and how to start NPROC processes of a script.
# One node: NPROC processes (one per GPU). Several nodes: run the same command on every node with
#   NNODES=<nodes> NODE_RANK=<this node, 0..NNODES-1> MASTER_ADDR=<host of node 0> [MASTER_PORT=29500]
# (torchrun's static rendezvous); every node needs the data and a --checkpoint_path that all nodes see
# (a shared file system): a resume reads the checkpoint on every node.
# shellcheck shell=bash
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
launch() {  # launch SCRIPT [args...]: plain python for one process, torchrun for several
  local script=$1; shift
  if [ "${NNODES:-1}" -gt 1 ]; then
    : "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0 (NNODES=$NNODES)}"
    : "${NODE_RANK:?set NODE_RANK to the index of this node, 0..$((NNODES - 1))}"
    exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="${NPROC:-1}" \
      --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}" "$ROOT/$script" "$@"
  fi
  if [ "${NPROC:-1}" -gt 1 ]; then
    exec torchrun --standalone --nproc_per_node="$NPROC" "$ROOT/$script" "$@"
  fi
  exec python "$ROOT/$script" "$@"
}
