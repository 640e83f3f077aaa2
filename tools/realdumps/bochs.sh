#!/usr/bin/env bash
# One boot under Bochs instead of QEMU: Bochs's corei7_haswell_4770 model has PCID and INVPCID,
# which QEMU's TCG drops (facts real-kernel.md). Slow: about 8 minutes for one boot here; the
# kernel gets nosoftlockup (Bochs's emulated time makes the watchdog fire).
#
#   tools/realdumps/bochs.sh CONFIG "KERNEL SWITCHES"
#   e.g. tools/realdumps/bochs.sh pcid-auto-nokaslr "nokaslr"
#
# Needs the initramfs regenerate.sh builds (run it once for the same KVER with the same WORK), and
# Debian's bochs, bochsbios, vgabios, grub-pc-bin, xorriso, mtools (apt-get install). Environment as
# for regenerate.sh: OUT, WORK, KVER, TIMEOUT (default 1500 s).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-$REPO/tests/linux/data/real}
WORK=${WORK:-/tmp/kaiser-realdumps}
TIMEOUT=${TIMEOUT:-1500}
cfg=$1
switches=$2
die() { printf 'bochs: error: %s\n' "$*" >&2; exit 1; }
[ -r "$WORK/initrd.cpio.gz" ] || die "no $WORK/initrd.cpio.gz: run regenerate.sh with WORK=$WORK first"
KVER=${KVER:?set KVER to the kernel the initramfs was built for}
for tool in bochs grub-mkrescue xorriso; do command -v $tool >/dev/null || die "$tool missing"; done
iso=$WORK/bochs-$cfg
rm -rf "$iso" && mkdir -p "$iso/root/boot/grub"
cp "/boot/vmlinuz-$KVER" "$iso/root/boot/vmlinuz"
cp "$WORK/initrd.cpio.gz" "$iso/root/boot/initrd.gz"
cat >"$iso/root/boot/grub/grub.cfg" <<CFG
set timeout=0
serial --unit=0 --speed=115200
terminal_output serial
menuentry "kaiser" {
  linux /boot/vmlinuz console=ttyS0 quiet panic=-1 nosoftlockup $switches
  initrd /boot/initrd.gz
}
CFG
grub-mkrescue -o "$iso/boot.iso" "$iso/root" >"$iso/mkrescue.log" 2>&1 || die "grub-mkrescue failed (see $iso/mkrescue.log)"
console=$iso/console.log
# rfb: the one display library Debian's bochs package has built in; no client ever connects.
# sound dummy: the ALSA plugin aborts without a sound card. "c" continues past the debugger prompt.
cat >"$iso/bochsrc" <<RC
megs: 512
cpu: model=corei7_haswell_4770, count=1
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
ata0-master: type=cdrom, path=$iso/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$console
display_library: rfb, options="timeout=0"
sound: driver=dummy
speaker: enabled=0
clock: sync=none
RC
printf 'bochs: %s: booting (timeout %ss)\n' "$cfg" "$TIMEOUT" >&2
( (printf 'c\n'; sleep "$TIMEOUT") | timeout -k 10 "$TIMEOUT" bochs -q -f "$iso/bochsrc" >"$iso/bochs.log" 2>&1 ) || true
grep -aq '@@KAISER-DONE@@' "$console" || die "init did not finish (see $console)"
# Bochs is slow enough for the soft-lockup watchdog (nosoftlockup silences it): its console lines
# interleave with the dumps on the serial port, and are not part of them
sed -i '/watchdog: BUG: soft lockup/d' "$console"
PY=python3
[ -x "$REPO/.venv/bin/python" ] && PY=$REPO/.venv/bin/python
"$PY" "$HERE/extract.py" "$console" "$OUT/$KVER-$cfg" --config "$cfg" \
    --qemu-cmd "bochs (cpu corei7_haswell_4770, 512 MiB) grub cdrom: $switches" --cpu corei7_haswell_4770
