#!/bin/bash
# Submits a stage graph (e.g. examples/configs/muomni_5stage.yaml) to SLURM: each wave of independent jobs as one job
# array (graph_job.sbatch, one array task per job), each later wave as an array that starts only when every task of
# the wave before succeeded (--dependency=afterok). For μOmni: A, B, C, D as an array of 4, then E.
#   bash examples/slurm/submit_graph.sh examples/configs/muomni_5stage.yaml runs/muomni [sbatch options...]
# `omni-mega train CONFIG --dry-run` prints the same waves.
set -euo pipefail
CONFIG=${1:?usage: submit_graph.sh CONFIG ROOT [sbatch options]}
ROOT=${2:?usage: submit_graph.sh CONFIG ROOT [sbatch options]}
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
# The waves, one line each ("A B C D", then "E"): the config's graph, read without torch.
mapfile -t WAVES < <(python - "$CONFIG" <<'PY'
import sys
from omni_mega.config import load_config
from omni_mega.config.graph import check, dependencies, topo_order
cfg = load_config(sys.argv[1])
check(cfg)
deps, level = dependencies(cfg), {}
for j in topo_order(cfg):
    level[j] = 1 + max((level[d] for d in deps[j]), default=-1)
for lv in range(max(level.values()) + 1):
    print(" ".join(j for j in topo_order(cfg) if level[j] == lv))
PY
)
DEP=()
for WAVE in "${WAVES[@]}"; do
    read -r -a JOBS <<< "$WAVE"
    ID=$(sbatch --parsable "${DEP[@]}" --array=0-$((${#JOBS[@]} - 1)) \
         --export=ALL,GRAPH_CONFIG="$CONFIG",GRAPH_ROOT="$ROOT",GRAPH_JOBS="$WAVE" "$@" "$HERE/graph_job.sbatch")
    echo "wave [$WAVE]: array job $ID${DEP[*]:+ (${DEP[*]})}"
    DEP=(--dependency=afterok:$ID)
done
