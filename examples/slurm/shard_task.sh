#!/usr/bin/env bash
# One Slurm task = one shard: SLURM_PROCID (0-based) and SLURM_NTASKS become --shard K/N.
# Run by campaign.sbatch through srun; PYTHON (default python) is the environment with the plugin.
set -euo pipefail
: "${SLURM_PROCID:?run me under srun (SLURM_PROCID is not set)}"
: "${SLURM_NTASKS:?run me under srun (SLURM_NTASKS is not set)}"
: "${INVARLOCK_SUITE:?set INVARLOCK_SUITE}"
: "${INVARLOCK_RUN_DIR:?set INVARLOCK_RUN_DIR}"
shard="$((SLURM_PROCID + 1))/${SLURM_NTASKS}"
log_dir="$INVARLOCK_RUN_DIR/slurm"
mkdir -p "$log_dir"
echo "shard $shard on $(hostname)" >&2
status=0
${PYTHON:-python} -m pytest validation/ --suite "$INVARLOCK_SUITE" -n auto --shard "$shard" \
    --run-dir "$INVARLOCK_RUN_DIR" --junitxml="$log_dir/junit-shard-$((SLURM_PROCID + 1))-of-${SLURM_NTASKS}.xml" \
    "$@" || status=$?
# pytest exits 1 when items failed: that is a verdict, not a broken shard. 2-4 mean the run itself broke.
if [[ $status -ne 0 && $status -ne 1 && $status -ne 5 ]]; then
    exit "$status"
fi
