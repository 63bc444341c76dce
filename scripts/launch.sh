# Shared by the launchers: the repository root and how to start NPROC processes of a script.
# shellcheck shell=bash
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
launch() {  # launch SCRIPT [args...]: plain python for one process, torchrun for several
  local script=$1; shift
  if [ "${NPROC:-1}" -gt 1 ]; then
    exec torchrun --standalone --nproc_per_node="$NPROC" "$ROOT/$script" "$@"
  fi
  exec python "$ROOT/$script" "$@"
}
