#!/usr/bin/env bash
# Preprocess a BIDS dataset on a SLURM cluster: one array task per participant, then one
# group-level job (QC table and page) that starts when every task has ended.
#
# Usage (on the login node, in an environment where `neuroml` is installed):
#
#     scripts/slurm_preprocess.sh /data/bids /scratch/derivatives [extra sbatch options...]
#     e.g. scripts/slurm_preprocess.sh /data/bids /scratch/deriv --partition=short --account=lab
#
# Environment variables (optional):
#     NEUROML_RESOLUTION   target grid in mm (default 2)
#     NEUROML_NORM         zscore (default) or percentile
#     NEUROML_TIME         time limit per participant (default 00:30:00; ~10 s of CPU per
#                          1 mm scan, so this leaves room for many sessions and slow disks)
#     NEUROML_MEM          memory per task (default 2G; one 1 mm scan peaks near 0.6 GB)
#     NEUROML_MAX_PARALLEL at most this many tasks at once (default 50: be kind to shared
#                          file systems)
#
# Participants come from participants.tsv (participant_id column), or from the sub-* folders when
# there is no participants.tsv. The list is frozen in OUT/logs/participants.txt so task i
# always processes the same participant. Each task runs
#     neuroml preprocess BIDS OUT participant --participant-label LABEL
# with one CPU (results do not depend on the number of threads, see the docs). Reruns are
# cheap: finished scans are skipped. A failing participant makes its task fail (exit 1;
# OUT/failures.tsv says why), and the group job still runs (afterany), so the QC page lists
# it. Logs: OUT/logs/preproc_<jobid>_<task>.out
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
BIDS=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2
RES=${NEUROML_RESOLUTION:-2}
NORM=${NEUROML_NORM:-zscore}
TIME=${NEUROML_TIME:-00:30:00}
MEM=${NEUROML_MEM:-2G}
MAXPAR=${NEUROML_MAX_PARALLEL:-50}
# shell-quoted copies for the job scripts below (paths with spaces or quotes)
printf -v BIDS_Q '%q' "$BIDS"
printf -v OUT_Q '%q' "$OUT"
printf -v RES_Q '%q' "$RES"
printf -v NORM_Q '%q' "$NORM"

if [[ ! -f "$BIDS/dataset_description.json" ]]; then
    echo "error: $BIDS is not a BIDS dataset (no dataset_description.json)" >&2
    exit 2
fi

mkdir -p "$OUT/logs"
LIST="$OUT/logs/participants.txt"
if [[ -f "$BIDS/participants.tsv" ]]; then
    # the participant_id column, 'sub-' prefix removed, Windows line ends tolerated
    tr -d '\r' < "$BIDS/participants.tsv" | awk -F '\t' '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") col = i
                  if (!col) { print "error: participants.tsv has no participant_id column" > "/dev/stderr"; exit 2 }
                  next }
        $col != "" { sub(/^sub-/, "", $col); print $col }' > "$LIST"
else
    find "$BIDS" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' -printf '%f\n' | sed 's/^sub-//' | sort > "$LIST"
fi
N=$(wc -l < "$LIST")
if [[ "$N" -eq 0 ]]; then
    echo "error: no participants found in $BIDS" >&2
    exit 2
fi
echo "$N participants listed in $LIST"

ARRAY_JOB=$(sbatch --parsable \
    --job-name=neuroml-preproc \
    --array="1-${N}%${MAXPAR}" \
    --cpus-per-task=1 --mem="$MEM" --time="$TIME" \
    --output="$OUT/logs/preproc_%A_%a.out" \
    "$@" <<EOF
#!/usr/bin/env bash
set -euo pipefail
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1
LABEL=\$(sed -n "\${SLURM_ARRAY_TASK_ID}p" $OUT_Q/logs/participants.txt)
echo "task \${SLURM_ARRAY_TASK_ID}: sub-\${LABEL} on \$(hostname)"
neuroml preprocess $BIDS_Q $OUT_Q participant --participant-label "\$LABEL" \
    --resolution $RES_Q --normalization $NORM_Q
EOF
)
echo "submitted participant array job $ARRAY_JOB (tasks 1-$N)"

GROUP_JOB=$(sbatch --parsable \
    --job-name=neuroml-preproc-group \
    --dependency="afterany:${ARRAY_JOB}" \
    --cpus-per-task=1 --mem=2G --time=00:30:00 \
    --output="$OUT/logs/group_%j.out" \
    "$@" <<EOF
#!/usr/bin/env bash
set -euo pipefail
neuroml preprocess $BIDS_Q $OUT_Q group
EOF
)
echo "submitted group job $GROUP_JOB (after $ARRAY_JOB): QC page at $OUT/group_qc.html"
