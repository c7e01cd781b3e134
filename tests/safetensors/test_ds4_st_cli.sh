#!/bin/sh
# CLI test of tools/ds4-st: exit codes and output on a hand-written good file, a broken file and
# (when the fixture is present) tiny-a. Usage: test_ds4_st_cli.sh PATH_TO_DS4_ST
set -u
st="$1"
dir=$(mktemp -d "${TMPDIR:-/tmp}/ds4-st-cli-XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT
fail=0
check() { # check DESCRIPTION CONDITION...
    what="$1"; shift
    if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fail=1; fi
}

# Writes a safetensors file: $1 path, $2 header JSON (length a multiple of 8), $3 data bytes.
write_st() {
    n=$(printf '%s' "$2" | wc -c)
    lo=$((n % 256)); hi=$((n / 256))
    printf "\\$(printf '%03o' $lo)\\$(printf '%03o' $hi)\\000\\000\\000\\000\\000\\000" > "$1"
    printf '%s' "$2" >> "$1"
    head -c "$3" /dev/zero >> "$1"
}

good='{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I8","shape":[4],"data_offsets":[8,12]}}'
pad=$(( (8 - $(printf '%s' "$good" | wc -c) % 8) % 8 ))
good="$good$(printf '%*s' $pad '')"
write_st "$dir/good.safetensors" "$good" 12
bad='{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}'
write_st "$dir/bad.safetensors" "$bad" 8

"$st" >/dev/null 2>&1; check "no arguments: exit 2" [ $? -eq 2 ]
"$st" show "$dir/good.safetensors" a x >/dev/null 2>&1; check "bad N: exit 2" [ $? -eq 2 ]

out=$("$st" validate "$dir/good.safetensors"); rc=$?
check "validate good: exit 0" [ $rc -eq 0 ]
check "validate good: summary" sh -c "printf '%s' \"\$1\" | grep -q 'valid, 2 tensors in 1 shard(s), 12 bytes'" _ "$out"

out=$("$st" list "$dir/good.safetensors"); rc=$?
check "list: exit 0" [ $rc -eq 0 ]
check "list: F32 [2] 8 bytes" sh -c "printf '%s' \"\$1\" | grep -Eq '^a +F32 +\\[2\\] +8 +good.safetensors'" _ "$out"
check "list: two lines" [ "$(printf '%s\n' "$out" | wc -l)" -eq 2 ]

err=$("$st" validate "$dir/bad.safetensors" 2>&1 >/dev/null); rc=$?
check "validate bad: exit 1" [ $rc -eq 1 ]
check "validate bad: names the problem" sh -c "printf '%s' \"\$1\" | grep -q \"tensor 'a': size mismatch\"" _ "$err"

"$st" validate "$dir/good.safetensors" "$dir/bad.safetensors" >/dev/null 2>&1
check "validate good+bad: exit 1" [ $? -eq 1 ]
"$st" show "$dir/good.safetensors" missing >/dev/null 2>&1
check "show missing tensor: exit 1" [ $? -eq 1 ]

tiny="${DS4_FIXTURES:-tests/fixtures}/tiny-a"
if [ -d "$tiny" ]; then
    out=$("$st" validate "$tiny"); rc=$?
    check "tiny-a: valid" [ $rc -eq 0 ]
    check "tiny-a: 585 tensors" sh -c "printf '%s' \"\$1\" | grep -q 'valid, 585 tensors'" _ "$out"
    # embed.weight[0:2] as printed by Python from the bf16 bits 0xbf69 0x3fe8
    out=$("$st" show "$tiny" embed.weight 2)
    check "tiny-a: embed.weight values" sh -c "printf '%s' \"\$1\" | grep -q 'first 2: -0.91015625 1.8125'" _ "$out"
fi
exit $fail
