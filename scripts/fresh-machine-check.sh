#!/usr/bin/env bash
# Checks the README's two set-up commands on a fresh Debian 12 machine, emulated by a debootstrap
# chroot. Not part of the tests or the CI: run it by hand, as root, after changing
# scripts/install-deps.sh, the build's dependencies, or anything the set-up relies on.
#
#   scripts/fresh-machine-check.sh [--user] [--keep] [--local=FILE]... [--no-demo] [--no-test]
#
#   --user        run the commands as the unprivileged user "debian" with passwordless sudo (as
#                 on a Debian cloud image) instead of root
#   --keep        reuse the root as the last run left it (packages installed): a quick rerun of
#                 the build and tests on the current HEAD; skips the pristine restore
#   --local=FILE  copy FILE (a path in the repository) from the working tree over the clone, to
#                 check an uncommitted change (e.g. --local=scripts/install-deps.sh)
#
# 1. Builds a Debian 12 (bookworm) minbase root in $FRESH_ROOT (default /tmp/fresh-root) plus what
#    a bare cloud image adds that ds4 could lean on (ca-certificates, git, sudo, a user with
#    sudo, full apt sources, /etc/hosts), from the Debian mirror the host's apt uses. A pristine
#    copy is saved to $FRESH_ROOT.pristine.tar; later runs restore it instead of debootstrapping.
# 2. Mounts proc, sys, /dev and /dev/pts (bind) and /dev/shm (tmpfs) into it; unmounts them on
#    exit, always.
# 3. Clones the repository's committed state (HEAD) into the root's home directory. Nothing
#    outside the clone is visible: no /usr/local/cuda (DS4_CUDA=AUTO builds without CUDA), no
#    ../shared, no build directories, no host environment variables.
# 4. Runs scripts/install-deps.sh (timed, then again to show it is a quick no-op), then
#    ./scripts/demo.sh, then ./scripts/test.sh. Logs: $FRESH_ROOT.logs/<UTC time>/.
# Exit status: 0 when every step succeeds, else the first failing step's status.
set -euo pipefail

ROOT=${FRESH_ROOT:-/tmp/fresh-root}
ROOT=${ROOT%/}
PRISTINE="$ROOT.pristine.tar"
STAMP="$ROOT.pristine.stamp"
LOGS="$ROOT.logs/$(date -u +%Y%m%dT%H%M%SZ)"
SUITE=bookworm
BASE_PKGS=ca-certificates,git,sudo
CLOUD_USER=debian
REPO=$(cd "$(dirname "$0")/.." && pwd)

keep=0 as_user=0 run_demo=1 run_test=1 local_files=()
for a in "$@"; do
    case "$a" in
        --keep) keep=1 ;;
        --user) as_user=1 ;;
        --local=*) local_files+=("${a#--local=}") ;;
        --no-demo) run_demo=0 ;;
        --no-test) run_test=0 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "fresh-machine-check: unknown argument $a" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "fresh-machine-check: needs root (debootstrap, mount, chroot)" >&2
    exit 2
fi
case "$ROOT" in
    /|"") echo "fresh-machine-check: refusing FRESH_ROOT=$ROOT" >&2; exit 2 ;;
    "$REPO"|"$REPO"/*) echo "fresh-machine-check: FRESH_ROOT must be outside the repository" >&2; exit 2 ;;
esac

log() { echo "fresh-machine-check: $*" >&2; }

# Mount points under $ROOT, deepest first (for unmounting).
mounted_under_root() {
    awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

cleanup() {
    local m
    for m in $(mounted_under_root); do
        umount "$m" 2>/dev/null || umount -l "$m" || log "could not unmount $m"
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The Debian mirror the host's apt uses (deb822 .sources or one-line .list), else deb.debian.org.
find_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
        [ -n "$uri" ] && { echo "${uri%/}"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/ && $i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
        [ -n "$uri" ] && { echo "${uri%/}"; return; }
    done
    echo http://deb.debian.org/debian
}
MIRROR=$(find_mirror)
stamp_text="suite=$SUITE base=$BASE_PKGS user=$CLOUD_USER mirror=$MIRROR v=2"

# Nothing may stay mounted under $ROOT before it is deleted or re-populated.
cleanup
if [ -n "$(mounted_under_root)" ]; then
    log "still mounted under $ROOT:"; mounted_under_root >&2; exit 1
fi

make_pristine() {
    command -v debootstrap >/dev/null || {
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    rm -rf --one-file-system "$ROOT"
    log "debootstrap --variant=minbase --include=$BASE_PKGS $SUITE $ROOT $MIRROR"
    debootstrap --variant=minbase --include="$BASE_PKGS" "$SUITE" "$ROOT" "$MIRROR" \
        > "$ROOT.debootstrap.log" 2>&1 || { tail -20 "$ROOT.debootstrap.log" >&2; exit 1; }
    # What a cloud image has beyond debootstrap: full apt sources (updates, security), a hosts
    # file, a default user with passwordless sudo. apt's date checks follow the host's apt
    # configuration (a snapshot mirror needs Check-Valid-Until false).
    rm -f "$ROOT/etc/apt/sources.list"
    cat > "$ROOT/etc/apt/sources.list.d/debian.sources" <<EOS
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
    if grep -rqs 'Check-Valid-Until' /etc/apt/apt.conf.d/; then
        echo 'Acquire::Check-Valid-Until "false";' > "$ROOT/etc/apt/apt.conf.d/99fresh-check"
    fi
    [ -s "$ROOT/etc/hosts" ] ||
        printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
    chroot "$ROOT" /usr/sbin/useradd -m -s /bin/bash "$CLOUD_USER"
    echo "$CLOUD_USER ALL=(ALL) NOPASSWD:ALL" > "$ROOT/etc/sudoers.d/90-cloud-user"
    chmod 0440 "$ROOT/etc/sudoers.d/90-cloud-user"
    log "saving pristine root to $PRISTINE"
    tar -C "$ROOT" -cpf "$PRISTINE.tmp" . && mv "$PRISTINE.tmp" "$PRISTINE"
    echo "$stamp_text" > "$STAMP"
}

t0=$SECONDS
if [ "$keep" -eq 1 ] && [ -x "$ROOT/bin/bash" ]; then
    log "reusing $ROOT as the last run left it (--keep)"
elif [ -f "$PRISTINE" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$stamp_text" ]; then
    log "restoring pristine root from $PRISTINE"
    rm -rf --one-file-system "$ROOT"
    mkdir -p "$ROOT"
    tar -C "$ROOT" -xpf "$PRISTINE"
else
    make_pristine
fi
log "root ready in $((SECONDS - t0)) s"

cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
# The chroot shares the host's hostname; cloud-init puts it in /etc/hosts (sudo resolves it).
host=$(hostname)
grep -qw -- "$host" "$ROOT/etc/hosts" || printf '127.0.1.1\t%s\n' "$host" >> "$ROOT/etc/hosts"
mount -t proc proc "$ROOT/proc"
mount -t sysfs sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$ROOT/dev/shm"

if [ "$as_user" -eq 1 ]; then
    home=/home/$CLOUD_USER
    run_as=(/usr/sbin/runuser -u "$CLOUD_USER" --)
    whom="user $CLOUD_USER"
else
    home=/root
    run_as=()
    whom=root
fi
rm -rf --one-file-system "$ROOT/root/ds4" "$ROOT/home/$CLOUD_USER/ds4"
git clone -q "$REPO" "$ROOT$home/ds4"
for f in "${local_files[@]}"; do
    cp "$REPO/$f" "$ROOT$home/ds4/$f"
    log "using the working tree's $f"
done
log "cloned $(git -C "$ROOT$home/ds4" log -1 --format='%h %s'), running as $whom"
[ "$as_user" -eq 0 ] || chroot "$ROOT" chown -R "$CLOUD_USER:$CLOUD_USER" "$home/ds4"

mkdir -p "$LOGS"
git -c safe.directory='*' -C "$ROOT$home/ds4" log -1 --format='%H %s' > "$LOGS/commit"
in_root() {
    chroot "$ROOT" "${run_as[@]}" /usr/bin/env -i HOME="$home" USER="${whom#user }" \
        LOGNAME="${whom#user }" SHELL=/bin/bash TERM=dumb LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "cd ~/ds4 && $1"
}

status=0
step() {   # step NAME COMMAND
    local name=$1 cmd=$2 t rc
    t=$SECONDS
    log "running $cmd (log: $LOGS/$name.log)"
    set +e
    in_root "$cmd" > "$LOGS/$name.log" 2>&1
    rc=$?
    set -e
    log "$cmd: exit $rc in $((SECONDS - t)) s"
    if [ "$rc" -ne 0 ]; then
        tail -40 "$LOGS/$name.log" >&2
        [ "$status" -ne 0 ] || status=$rc
    fi
}

step install "time ./scripts/install-deps.sh"
step install-again "time ./scripts/install-deps.sh"
[ "$run_demo" -eq 0 ] || step demo "./scripts/demo.sh"
[ "$run_test" -eq 0 ] || step test "./scripts/test.sh"
if [ -f "$LOGS/test.log" ] && [ "$run_test" -eq 1 ]; then
    # ctest's verdicts, and the error lines of failing tests
    grep -E 'tests passed|\(Failed\)|\(Timeout\)|\(SEGFAULT\)|\(Subprocess aborted\)|Not Run|FAIL |^error:|ERROR: ' \
        "$LOGS/test.log" >&2 || true
fi
log "done in $((SECONDS - t0)) s, exit $status"
exit "$status"
