#!/bin/sh
# bench/tokenizer/run.sh - ds4's tokenizer vs the Hugging Face `tokenizers` library (Rust),
# single thread, same input (the public golden corpus concatenated x20), same tokenizer.json.
#   bench/tokenizer/run.sh [BUILD_DIR]      (default: build)
# Needs bench-tokenizer built (cmake --build BUILD_DIR --target bench-tokenizer). The Rust
# library comes from npm (@anush008/tokenizers, a native binding; installed on first run into
# bench/tokenizer/node_modules, offline afterwards). Without node/npm only ds4 is measured.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build="$root/$build" ;; esac
tok="$root/models/tokenizer/tokenizer.json"
corpus="$root/tests/fixtures/tokenizer/encode-public.jsonl"

have_hf=no
if command -v node >/dev/null 2>&1; then
    if [ ! -d "$here/node_modules/@anush008/tokenizers" ] && command -v npm >/dev/null 2>&1; then
        (cd "$here" && npm install --no-audit --no-fund --silent >/dev/null 2>&1) || true
    fi
    [ -d "$here/node_modules/@anush008/tokenizers" ] && have_hf=yes
fi
[ $have_hf = yes ] || echo "hf-tokenizers: not available (node/npm or @anush008/tokenizers missing); ds4 only"

status=0
for mode in one-text rows; do
    flag=""
    [ $mode = rows ] && flag=--rows
    echo "== $mode: corpus x20 encoded as $( [ $mode = rows ] && echo 'one text per corpus row' || echo 'one text')"
    ours=$("$build/bench/tokenizer/bench-tokenizer" --tokenizer "$tok" --corpus "$corpus" \
           --times 20 --reps 3 $flag)
    echo "$ours"
    [ $have_hf = yes ] || continue
    theirs=$(cd "$here" && RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
             node hf-bench.js "$tok" "$corpus" 20 3 $mode) || { echo "hf-bench failed"; status=1; continue; }
    echo "$theirs"
    node -e '
const a = JSON.parse(process.argv[1]), b = JSON.parse(process.argv[2]);
const same = a.tokens === b.tokens && a.ids_fnv === b.ids_fnv;
console.log(`ids identical: ${same ? "yes" : "NO"} (${a.tokens} vs ${b.tokens} tokens)`);
console.log(`encode: ds4 ${a.mb_per_s} MB/s, ${(a.tokens_per_s / 1e6).toFixed(2)} M tok/s | ` +
            `hf ${b.mb_per_s} MB/s, ${(b.tokens_per_s / 1e6).toFixed(2)} M tok/s | ` +
            `ratio ${(a.mb_per_s / b.mb_per_s).toFixed(2)}x`);
console.log(`load:   ds4 ${a.load_ms} ms | hf ${b.load_ms} ms | ` +
            `ds4 ${(b.load_ms / a.load_ms).toFixed(2)}x faster`);
if (!same) process.exit(1);
' "$ours" "$theirs" || status=1
done
exit $status
