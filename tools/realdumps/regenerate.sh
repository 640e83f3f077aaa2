#!/usr/bin/env bash
# Regenerate tests/linux/data/real/: page-table dumps of Debian's own kernel booted under QEMU (TCG).
#
#   tools/realdumps/regenerate.sh [CONFIG...]
#
# CONFIGs (default: the first four):
#   pti-nokaslr       pti=on nokaslr, 1 CPU
#   nopti-nokaslr     nopti nokaslr, 1 CPU
#   pti-kaslr         pti=on (KASLR on), 1 CPU
#   pti-nokaslr-smp2  pti=on nokaslr, 2 CPUs
#   auto-nokaslr      pti=auto (the default) nokaslr, 1 CPU: Intel without PCID -> global kernel image
#   amd-pti-nokaslr   pti=on nokaslr on -cpu EPYC, 1 CPU: no debug-store page, never a global image
#   amd-auto-nokaslr  pti=auto nokaslr on -cpu EPYC, 1 CPU: no Meltdown bug -> no PTI
#   pti-emulate       pti=on nokaslr vsyscall=emulate, 1 CPU
#   pti-nokaslr-smp4  pti=on nokaslr, 4 CPUs
#   la57-pti-nokaslr  pti=on nokaslr on -cpu Haswell,+la57, 1 CPU: 5-level paging
#   pti-kaslr-smp2    pti=on (KASLR on), 2 CPUs (6.2+: entry areas at random slots)
#   auto-kaslr        pti=auto (KASLR on), 1 CPU: the global kernel image at a random base
#   la57-pti-kaslr    pti=on (KASLR on) on -cpu Haswell,+la57, 1 CPU
#
# Environment: OUT (default tests/linux/data/real), WORK (build dir, default /tmp/kaiser-realdumps),
# KVER (kernel release, default the newest installed /boot/vmlinuz-* with headers), QEMU_CPU
# (default: the config's model, Haswell -- Intel, so Meltdown-affected -- unless it says otherwise), MEM
# (default 512M), TIMEOUT (seconds per QEMU run, default 300), NO_INSTALL=1 (never apt-get).
# See tools/realdumps/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-$REPO/tests/linux/data/real}
WORK=${WORK:-/tmp/kaiser-realdumps}
MEM=${MEM:-512M}
TIMEOUT=${TIMEOUT:-300}
ALL_CONFIGS=(pti-nokaslr nopti-nokaslr pti-kaslr pti-nokaslr-smp2)
if [ $# -gt 0 ]; then CONFIGS=("$@"); else CONFIGS=("${ALL_CONFIGS[@]}"); fi

log() { printf 'regenerate: %s\n' "$*" >&2; }
die() { printf 'regenerate: error: %s\n' "$*" >&2; exit 1; }

MORE_CONFIGS=(auto-nokaslr amd-pti-nokaslr amd-auto-nokaslr pti-emulate pti-nokaslr-smp4 la57-pti-nokaslr pti-kaslr-smp2
              auto-kaslr la57-pti-kaslr)
config_args() {  # config_args NAME -> "<kernel switches>|<cpus>|<qemu cpu model>"
    case $1 in
        pti-nokaslr) echo "pti=on nokaslr|1|Haswell" ;;
        nopti-nokaslr) echo "nopti nokaslr|1|Haswell" ;;
        pti-kaslr) echo "pti=on|1|Haswell" ;;
        pti-nokaslr-smp2) echo "pti=on nokaslr|2|Haswell" ;;
        auto-nokaslr) echo "nokaslr|1|Haswell" ;;
        amd-pti-nokaslr) echo "pti=on nokaslr|1|EPYC" ;;
        amd-auto-nokaslr) echo "nokaslr|1|EPYC" ;;
        pti-emulate) echo "pti=on nokaslr vsyscall=emulate|1|Haswell" ;;
        pti-nokaslr-smp4) echo "pti=on nokaslr|4|Haswell" ;;
        la57-pti-nokaslr) echo "pti=on nokaslr|1|Haswell,+la57" ;;
        pti-kaslr-smp2) echo "pti=on|2|Haswell" ;;
        auto-kaslr) echo "|1|Haswell" ;;
        la57-pti-kaslr) echo "pti=on|1|Haswell,+la57" ;;
        *) die "unknown config '$1' (known: ${ALL_CONFIGS[*]} ${MORE_CONFIGS[*]})" ;;
    esac
}
for c in "${CONFIGS[@]}"; do config_args "$c" >/dev/null; done

# ---- 1. what we need, from Debian's packages ------------------------------------------------
newest_kver() {
    local v best=""
    for f in /boot/vmlinuz-*; do
        [ -e "$f" ] || continue
        v=${f#/boot/vmlinuz-}
        [ -d "/lib/modules/$v/build" ] || continue
        if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$v" | sort -V | tail -1)" = "$v" ]; then best=$v; fi
    done
    echo "$best"
}

need_install() {
    [ -n "${KVER:-$(newest_kver)}" ] || return 0
    command -v qemu-system-x86_64 >/dev/null || return 0
    [ -x /bin/busybox ] || return 0
    ! ldd /bin/busybox >/dev/null 2>&1 || return 0  # static (busybox-static), not busybox
    command -v gcc >/dev/null && command -v make >/dev/null && command -v cpio >/dev/null || return 0
    [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || return 0
    return 1
}

if need_install; then
    [ "${NO_INSTALL:-0}" = 1 ] && die "missing packages and NO_INSTALL=1"
    [ "$(id -u)" = 0 ] || die "missing packages; run as root (or install: linux-image-amd64 linux-headers-amd64 qemu-system-x86 busybox-static build-essential kmod cpio)"
    log "installing Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    pkgs=(qemu-system-x86 busybox-static build-essential kmod cpio)
    if [ -n "${KVER:-}" ]; then
        pkgs+=("linux-image-$KVER" "linux-headers-$KVER")
    else
        pkgs+=(linux-image-amd64 linux-headers-amd64)
    fi
    apt-get install -y -q "${pkgs[@]}"
fi
KVER=${KVER:-$(newest_kver)}
[ -n "$KVER" ] || die "no /boot/vmlinuz-* with matching /lib/modules/*/build headers"
VMLINUZ=/boot/vmlinuz-$KVER
[ -r "$VMLINUZ" ] || die "cannot read $VMLINUZ"
log "kernel $KVER"

# ---- 2. the module and the initramfs ----------------------------------------------------------
rm -rf "$WORK"
mkdir -p "$WORK/mod" "$WORK/root"/{bin,proc,sys,dev}
cp "$HERE/ptdump_mod/ptdump_mod.c" "$HERE/ptdump_mod/Makefile" "$WORK/mod/"
make -s -C "$WORK/mod" KVER="$KVER" >"$WORK/mod/build.log" 2>&1 || { cat "$WORK/mod/build.log" >&2; die "module build failed"; }
modinfo -F vermagic "$WORK/mod/ptdump_mod.ko" | grep -q "^$KVER " || die "module vermagic does not match $KVER"
cp "$WORK/mod/ptdump_mod.ko" "$WORK/root/"
gcc -static -O2 -Wall -o "$WORK/root/ptcat" "$HERE/initramfs/ptcat.c"
cp /bin/busybox "$WORK/root/bin/busybox"
install -m 0755 "$HERE/initramfs/init" "$WORK/root/init"
(cd "$WORK/root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -9) >"$WORK/initrd.cpio.gz"
log "initramfs $(du -h "$WORK/initrd.cpio.gz" | cut -f1)"

# ---- 3. boot each configuration, capture the console, extract -------------------------------
PY=python3
[ -x "$REPO/.venv/bin/python" ] && PY=$REPO/.venv/bin/python
status=0
for cfg in "${CONFIGS[@]}"; do
    IFS='|' read -r switches cpus model <<<"$(config_args "$cfg")"
    cpu_model=${QEMU_CPU:-$model}
    console=$WORK/console-$cfg.log
    append="console=ttyS0 quiet panic=-1 $switches"
    qemu=(qemu-system-x86_64 -accel tcg -cpu "$cpu_model" -smp "$cpus" -m "$MEM"
          -kernel "$VMLINUZ" -initrd "$WORK/initrd.cpio.gz" -append "$append"
          -display none -monitor none -serial "file:$console" -no-reboot)
    log "$cfg: booting (timeout ${TIMEOUT}s): ${qemu[*]}"
    t0=$(date +%s)
    rc=0
    timeout -k 10 "$TIMEOUT" "${qemu[@]}" </dev/null >"$WORK/qemu-$cfg.log" 2>&1 || rc=$?
    log "$cfg: qemu exited $rc after $(( $(date +%s) - t0 ))s"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        log "$cfg: TIMEOUT; last console lines:"; tail -20 "$console" >&2 || true
        status=1; continue
    fi
    grep -q '@@KAISER-DONE@@' "$console" || { log "$cfg: init did not finish; console tail:"; tail -30 "$console" >&2; status=1; continue; }
    dest=$OUT/$KVER-$cfg
    rm -rf "$dest"
    # record the command as a user would type it (paths to the build dir abbreviated)
    shown="${qemu[*]}"
    shown=${shown//$WORK\//}
    "$PY" "$HERE/extract.py" "$console" "$dest" --config "$cfg" --qemu-cmd "$shown" --cpu "$cpu_model" || { status=1; continue; }
done
exit $status
