#!/usr/bin/env bash
# Submit one InvarLock campaign as N Slurm shards on N nodes, then the merge that compiles one verdict.
#
#   examples/slurm/submit.sh SUITE RUN_DIR [NODES] [extra pytest options...]
#   examples/slurm/submit.sh b200 /shared/runs/b200 4
#
# RUN_DIR must be on a filesystem every node sees (NFS, Lustre, GPFS). The campaign job runs one
# task per node (campaign.sbatch -> shard_task.sh: `pytest validation/ --suite SUITE -n auto
# --shard K/N`); the merge job starts once the campaign has ended, however it ended
# (--dependency=afterany), and runs `python -m pytest_invarlock report RUN_DIR`, which says which
# shards are missing or incomplete.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 SUITE RUN_DIR [NODES] [extra pytest options...]" >&2
    exit 2
fi
suite=$1
run_dir=$2
nodes=${3:-2}
shift $(( $# < 3 ? $# : 3 ))
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

mkdir -p "$run_dir/slurm"
campaign=$(sbatch --parsable --nodes="$nodes" --ntasks-per-node=1 \
    --output="$run_dir/slurm/campaign-%j-%t.out" \
    --export=ALL,INVARLOCK_SUITE="$suite",INVARLOCK_RUN_DIR="$run_dir" \
    "$here/campaign.sbatch" "$@")
merge=$(sbatch --parsable --dependency="afterany:$campaign" --nodes=1 --ntasks=1 \
    --output="$run_dir/slurm/merge-%j.out" \
    --export=ALL,INVARLOCK_RUN_DIR="$run_dir" \
    "$here/merge.sbatch")
echo "campaign job $campaign ($nodes shards), merge job $merge; results: $run_dir"
