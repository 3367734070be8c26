#!/usr/bin/env bash
# Performance history: run the asv suite on the last N commits of a branch, publish the HTML.
#
#   asv_bench/history.sh [N]          # default N=10, branch main
#
# Environment:
#   NORMCORE_ASV_QUICK=1   only the quick shapes (minutes instead of hours per commit)
#   ASV_MACHINE=NAME       machine name to record results under (default: the hostname);
#                          on GPU machines include the GPU model, e.g. "lab-box-a100-80gb"
#   ASV_REF=main           branch or commit whose first-parent history is walked
#   ASV_ARGS="..."         extra `asv run` arguments, e.g. "-b LayerNorm" or "--interleave-rounds"
#   ASV=path/to/asv        asv executable (default: the project's .venv, else `asv` on PATH)
#
# Commits that already have results for this machine and environment are skipped, so re-running
# after new commits only benchmarks the new ones. asv builds each commit in its own virtualenv
# under .asv/env (pip needs a package index the first time) and runs the benchmark suite of the
# working tree against it; commits that predate a layer or backend show those cases as n/a.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

n="${1:-10}"
ref="${ASV_REF:-main}"
if [[ -z "${ASV:-}" ]]; then
    if [[ -x ../.venv/bin/asv ]]; then ASV=../.venv/bin/asv; else ASV=asv; fi
fi
machine_args=()
[[ -n "${ASV_MACHINE:-}" ]] && machine_args=(--machine "$ASV_MACHINE")

# Machine description, non-interactively, only when none is stored for this machine yet.
if ! python3 - "${ASV_MACHINE:-}" <<'PY'
import json, os, platform, sys
path = os.path.expanduser("~/.asv-machine.json")
name = sys.argv[1] or platform.node()
sys.exit(0 if os.path.exists(path) and name in json.load(open(path)) else 1)
PY
then
    "$ASV" machine --yes "${machine_args[@]}" >/dev/null || exit 1
fi

hashfile="$(mktemp)"
trap 'rm -f "$hashfile"' EXIT
git -C .. rev-list --first-parent --max-count="$n" "$ref" > "$hashfile" || exit 1
echo "history: benchmarking $(wc -l < "$hashfile") commit(s) of $ref (quick=${NORMCORE_ASV_QUICK:-0})"

# Exit status 2 means some benchmark failed at some commit (e.g. a commit that predates the
# feature raising something other than NotImplementedError); publish what there is anyway.
# shellcheck disable=SC2086
"$ASV" run "HASHFILE:$hashfile" --skip-existing-commits "${machine_args[@]}" ${ASV_ARGS:-}
status=$?

"$ASV" publish || exit 1
echo
echo "history: HTML in $(cd .. && pwd)/.asv/html/index.html"
echo "history: serve it with: cd asv_bench && $ASV preview   (then open the printed URL)"
exit "$status"
