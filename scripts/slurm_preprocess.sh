#!/usr/bin/env bash
# Preprocess a BIDS dataset on a SLURM cluster: one array task per participant, then one
# group-level job (QC table and page) that starts when every task has ended.
#
# Usage (on the login node, in an environment where `neuroml` is installed):
#
#     scripts/slurm_preprocess.sh BIDS OUT [sbatch options...] [-- neuroml preprocess options...]
#     e.g. scripts/slurm_preprocess.sh /data/bids /scratch/deriv --partition=short --account=lab \
#              -- --modality both --confounds scrubbing
#     scripts/slurm_preprocess.sh --list BIDS    # print the participant labels; submit nothing
#
# Options after `--` are added to every participant task's `neuroml preprocess ... participant`
# command (--modality, --resolution, --normalization, --confounds; they win over the variables
# below). Options before it go to sbatch.
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
# Participants are the sub-* folders of BIDS (alphanumeric labels). A participants.tsv row
# without a folder is reported on stderr and skipped; a folder without a row is processed.
# The list is frozen in OUT/logs/participants.txt so task i always processes the same
# participant. Each task runs
#     neuroml preprocess BIDS OUT participant --participant-label LABEL [options after --]
# with one CPU (results do not depend on the number of threads, see the docs). Reruns are
# cheap: finished scans are skipped. A failing participant makes its task fail (exit 1;
# OUT/failures.tsv says why), and the group job still runs (afterany), so the QC page lists
# it. Logs: OUT/logs/preproc_<jobid>_<task>.out
set -euo pipefail

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

# Print the participant labels of BIDS dir $1, one a line, sorted; warnings on stderr.
list_participants() {
    local bids=$1 dir label tsv_labels
    local -A folder=()
    for dir in "$bids"/sub-*; do
        [[ -d "$dir" ]] || continue
        label=${dir##*/sub-}
        if [[ ! "$label" =~ ^[A-Za-z0-9]+$ ]]; then
            echo "warning: $dir: not a BIDS participant folder (label must be letters and digits): skipped" >&2
            continue
        fi
        folder[$label]=1
    done
    if [[ -f "$bids/participants.tsv" ]]; then
        # the participant_id column, 'sub-' prefix removed, Windows line ends tolerated
        if ! tsv_labels=$(tr -d '\r' < "$bids/participants.tsv" | awk -F '\t' '
                NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") col = i
                          if (!col) exit 3
                          next }
                $col != "" { sub(/^sub-/, "", $col); print $col }'); then
            echo "error: $bids/participants.tsv has no participant_id column" >&2
            return 2
        fi
        while IFS= read -r label; do
            [[ -n "$label" ]] || continue
            if [[ -z "${folder[$label]+x}" ]]; then
                echo "warning: $bids/participants.tsv lists sub-$label but there is no folder $bids/sub-$label: skipped" >&2
            fi
        done <<< "$tsv_labels"
    fi
    if [[ ${#folder[@]} -gt 0 ]]; then
        printf '%s\n' "${!folder[@]}" | LC_ALL=C sort
    fi
}

check_bids() {
    if [[ ! -d "$1" ]]; then
        echo "error: $1: BIDS folder not found" >&2
        exit 2
    fi
    if [[ ! -f "$1/dataset_description.json" ]]; then
        echo "error: $1 is not a BIDS dataset (no dataset_description.json)" >&2
        exit 2
    fi
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
if [[ "${1:-}" == "--list" ]]; then
    if [[ $# -ne 2 ]]; then
        echo "error: usage: $0 --list BIDS" >&2
        exit 2
    fi
    check_bids "$2"
    LABELS=$(list_participants "$2")
    if [[ -z "$LABELS" ]]; then
        echo "error: no participants found in $2 (no sub-* folders)" >&2
        exit 2
    fi
    printf '%s\n' "$LABELS"
    exit 0
fi
if [[ $# -lt 2 ]]; then
    usage >&2
    exit 2
fi
check_bids "$1"
BIDS=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2
SBATCH_OPTS=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
    SBATCH_OPTS+=("$1")
    shift
done
[[ $# -gt 0 ]] && shift  # the `--`
NEUROML_OPTS=("$@")

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
EXTRA_Q=""
if [[ ${#NEUROML_OPTS[@]} -gt 0 ]]; then
    printf -v EXTRA_Q ' %q' "${NEUROML_OPTS[@]}"
fi

mkdir -p "$OUT/logs"
LIST="$OUT/logs/participants.txt"
list_participants "$BIDS" > "$LIST"
N=$(wc -l < "$LIST")
if [[ "$N" -eq 0 ]]; then
    echo "error: no participants found in $BIDS (no sub-* folders)" >&2
    exit 2
fi
echo "$N participants listed in $LIST"

ARRAY_JOB=$(sbatch --parsable \
    --job-name=neuroml-preproc \
    --array="1-${N}%${MAXPAR}" \
    --cpus-per-task=1 --mem="$MEM" --time="$TIME" \
    --output="$OUT/logs/preproc_%A_%a.out" \
    ${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"} <<EOF
#!/usr/bin/env bash
set -euo pipefail
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1
LABEL=\$(sed -n "\${SLURM_ARRAY_TASK_ID}p" $OUT_Q/logs/participants.txt)
echo "task \${SLURM_ARRAY_TASK_ID}: sub-\${LABEL} on \$(hostname)"
neuroml preprocess $BIDS_Q $OUT_Q participant --participant-label "\$LABEL" \\
    --resolution $RES_Q --normalization $NORM_Q$EXTRA_Q
EOF
)
echo "submitted participant array job $ARRAY_JOB (tasks 1-$N)"

GROUP_JOB=$(sbatch --parsable \
    --job-name=neuroml-preproc-group \
    --dependency="afterany:${ARRAY_JOB}" \
    --cpus-per-task=1 --mem=2G --time=00:30:00 \
    --output="$OUT/logs/group_%j.out" \
    ${SBATCH_OPTS[@]+"${SBATCH_OPTS[@]}"} <<EOF
#!/usr/bin/env bash
set -euo pipefail
neuroml preprocess $BIDS_Q $OUT_Q group
EOF
)
echo "submitted group job $GROUP_JOB (after $ARRAY_JOB): QC page at $OUT/group_qc.html"
