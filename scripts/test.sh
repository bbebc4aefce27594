#!/usr/bin/env bash
# Set up, start the local SLURM cluster (real slurmctld/slurmd/slurmdbd on loopback), run the test suite, stop
# the cluster. Extra arguments go to pytest. QUADRL_SKIP_SLURM=1 runs without the cluster (SLURM tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
started=0
if [ "${QUADRL_SKIP_SLURM:-0}" != 1 ]; then
  bash cluster/slurm_up.sh
  started=1
fi
trap '[ "$started" = 1 ] && bash cluster/slurm_down.sh' EXIT
.venv/bin/python -m pytest "$@"
