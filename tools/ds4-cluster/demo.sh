#!/usr/bin/env bash
# The cluster demo (README command 1 after the build): write the embedded tiny V4 model, start a
# local cluster (router + 1 prefill + 1 decode on loopback), send one chat request with ds4-cli
# and show the streamed answer (reasoning, then content), stop the cluster.
#
#   tools/ds4-cluster/demo.sh [BUILD_DIR] [QUESTION]
set -euo pipefail
B=${1:-build}
Q=${2:-"Hello! In one sentence, what is disaggregated prefill/decode serving?"}
run=$(mktemp -d /tmp/ds4-demo.XXXXXX)
stop() { "$B/tools/ds4-cluster/ds4-cluster" stop --run-dir "$run" >/dev/null 2>&1 || true; }
trap stop EXIT

"$B/tools/ds4-mkmodel/ds4-mkmodel" "$run/model"
ready=$("$B/tools/ds4-cluster/ds4-cluster" start --model "$run/model" --run-dir "$run" \
        --port 0 --http-port 0 --threads 1)
echo "$ready"
router=$(echo "$ready" | sed -n 's/.*router=\([^ ]*\).*/\1/p')
echo "> $Q"
"$B/tools/ds4-cli/ds4-cli" --router "$router" --chat "$Q" --reasoning on --max-tokens 48 \
    --usage
"$B/tools/ds4-cluster/ds4-cluster" stop --run-dir "$run"
trap - EXIT
