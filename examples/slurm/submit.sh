#!/usr/bin/env bash
# Submit one InvarLock campaign to Slurm: one array task per node, then the merge that compiles one verdict.
#
#   examples/slurm/submit.sh [options] SUITE RUN_DIR [-- extra pytest options]
#
#   --nodes N             array tasks, one node each (default 2)
#   --gpus-per-node G     GPUs each node asks for (default 0: CPU nodes); workers: one per GPU, or one process
#   --cpus-per-node C     CPUs each node asks for (default: 8 per GPU, 1 without GPUs)
#   --time T              time limit per task, as sbatch takes it (default: the partition's); checked against
#                         the partition's limit at submission
#   --partition P         partition (default: the cluster's default)
#   --account A           account to charge (default: none given)
#   --signal-margin S     seconds before the time limit at which a node stops and requeues itself (default 300)
#   --only K[,K...]       submit only these nodes (to resubmit a cancelled or failed one), and no merge
#   --fixed-split         each node runs a fixed share (--shard K/N) instead of claiming items at run time
#   --python PATH         the Python with the plugin (default: `python3` on PATH here, resolved now)
#   --no-merge            do not submit the merge job
#
# Run it from anywhere: it finds the repository it lives in. RUN_DIR must be a directory every node mounts at
# the same path (NFS, Lustre, GPFS). At submission it checks the environment (`python -m pytest_invarlock
# node-check`: packages, a writable RUN_DIR that takes locks) and that the cluster can run what is asked
# (`sbatch --test-only`, the time limit); each task checks again on its node, RUN_DIR being shared included.
# Node K runs `pytest validation/ --suite SUITE --run-dir RUN_DIR --campaign-node K/N` (examples/slurm/node.sbatch)
# and logs to RUN_DIR/slurm/node-K.log; the merge (merge.sbatch, after every task ends however it ends) runs
# `python -m pytest_invarlock report RUN_DIR` and logs to RUN_DIR/slurm/merge-<job>.log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
usage() {
    sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
fail() {
    echo "submit: $*" >&2
    exit 2
}

nodes=2 gpus=0 cpus="" time_limit="" partition="" account="" margin=300 only="" mode=claims merge=1
python=${PYTHON:-python3}
while (($#)); do
    case $1 in
        --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
        --gpus-per-node) gpus=${2:?--gpus-per-node needs a number}; shift 2 ;;
        --cpus-per-node) cpus=${2:?--cpus-per-node needs a number}; shift 2 ;;
        --time) time_limit=${2:?--time needs a limit such as 04:00:00}; shift 2 ;;
        --partition) partition=${2:?--partition needs a name}; shift 2 ;;
        --account) account=${2:?--account needs a name}; shift 2 ;;
        --signal-margin) margin=${2:?--signal-margin needs seconds}; shift 2 ;;
        --only) only=${2:?--only needs node numbers such as 2 or 1,3}; shift 2 ;;
        --fixed-split) mode=shards; shift ;;
        --python) python=${2:?--python needs a path}; shift 2 ;;
        --no-merge) merge=0; shift ;;
        -h | --help) usage ;;
        --) break ;;
        -*) fail "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
(($# >= 2)) || usage
suite=$1 run_dir=$2
shift 2
[[ ${1:-} == -- ]] && shift
for number in "$nodes" "$gpus" "$margin" ${cpus:+"$cpus"}; do
    [[ $number =~ ^[0-9]+$ ]] || fail "'$number' is not a whole number (see --help)"
done
((nodes >= 1)) || fail "--nodes must be at least 1"
[[ -n $cpus ]] || cpus=$((gpus > 0 ? 8 * gpus : 1))
[[ -d $repo/validation ]] || fail "$repo/validation is missing: keep this script inside the repository (examples/slurm/)"
command -v sbatch >/dev/null || fail "sbatch not found: run this on a Slurm login node"
python=$(command -v "$python") || fail "Python '$python' not found: pass --python PATH (the environment with the plugin)"
mkdir -p "$run_dir" || fail "cannot create $run_dir"
run_dir=$(cd "$run_dir" && pwd -P)

# The environment, here: the packages, a writable run directory that takes POSIX locks; the marker each node checks.
marker="submitted-$(date +%Y%m%dT%H%M%S)-$$"
"$python" -m pytest_invarlock node-check "$run_dir" --mark "$marker" ||
    fail "the environment check failed (above); nothing was submitted"

# What the cluster can run: the time limit against the partition's, then everything else sbatch checks.
part=${partition:-$(sinfo -h -o '%P' | sed -n 's/\*$//p' | head -1)}
if [[ -n $time_limit ]]; then
    limit=$(sinfo -h -p "$part" -o '%l' | head -1)
    "$python" - "$time_limit" "$limit" "$part" <<'EOF' || exit 2
import math, re, sys
def seconds(text):
    """Seconds in a Slurm time: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]]."""
    if text.lower() in ("infinite", "unlimited", ""):
        return math.inf
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    else:
        h, m, s = {1: (0, parts[0], 0), 2: (0, *parts)}.get(len(parts), parts)
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s
asked, limit, part = sys.argv[1:]
if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", asked):
    sys.exit(f"submit: --time {asked!r}: write it as sbatch does, e.g. 04:00:00 or 1-00:00:00")
if seconds(asked) > seconds(limit):
    sys.exit(f"submit: --time {asked} is above partition {part}'s limit ({limit}): the tasks would wait forever. "
             f"Ask for at most {limit}, or pick another --partition.")
EOF
fi
common=(--nodes=1 --ntasks=1 --cpus-per-task="$cpus")
[[ -n $partition ]] && common+=(--partition="$partition")
[[ -n $account ]] && common+=(--account="$account")
[[ -n $time_limit ]] && common+=(--time="$time_limit")
((gpus > 0)) && common+=(--gpus-per-node="$gpus")
if ! err=$(sbatch --test-only "${common[@]}" --wrap true 2>&1); then
    echo "$err" >&2
    fail "the cluster refuses a task of --gpus-per-node $gpus --cpus-per-node $cpus${partition:+ --partition $partition}${account:+ --account $account}${time_limit:+ --time $time_limit} (above); change those options (--gpus-per-node 0 on CPU-only nodes)"
fi

array=${only:-1-$nodes}
mkdir -p "$run_dir/slurm"
export INVARLOCK_REPO=$repo INVARLOCK_PYTHON=$python INVARLOCK_SUITE=$suite INVARLOCK_RUN_DIR=$run_dir
export INVARLOCK_NODES=$nodes INVARLOCK_GPUS=$gpus INVARLOCK_MODE=$mode INVARLOCK_MARKER=$marker
campaign=$(sbatch --parsable --job-name="invarlock-$suite" --array="$array" "${common[@]}" \
    --output="$run_dir/slurm/node-%a.log" --open-mode=append --requeue --signal="B:USR1@$margin" \
    --export=ALL "$here/node.sbatch" "$@")
campaign=${campaign%%;*}
echo "campaign: job $campaign, array tasks $array of $nodes (task K = node K); logs $run_dir/slurm/node-K.log"
echo "  cancel node K:    scancel ${campaign}_K"
fixed=""
[[ $mode == shards ]] && fixed=" --fixed-split"
echo "  resubmit node K:  $here/submit.sh --only K --nodes $nodes --gpus-per-node $gpus --cpus-per-node $cpus${partition:+ --partition $partition}${account:+ --account $account}${time_limit:+ --time $time_limit}$fixed --python $python $suite $run_dir${*:+ -- $*}"
if ((merge)) && [[ -z $only ]]; then
    job=$(sbatch --parsable --job-name="invarlock-merge" --dependency="afterany:$campaign" --nodes=1 --ntasks=1 \
        ${partition:+--partition="$partition"} ${account:+--account="$account"} \
        --output="$run_dir/slurm/merge-%j.log" --export=ALL "$here/merge.sbatch")
    echo "merge: job ${job%%;*} after every task ends; log $run_dir/slurm/merge-${job%%;*}.log"
fi
echo "merge again at any time: $python -m pytest_invarlock report $run_dir"
