#!/bin/sh
# Capture the RAM of a real Linux guest for the benchmarks: boot Debian's
# cloud kernel (linux-image-cloud-amd64) under QEMU/TCG with a busybox
# initramfs whose /init mounts a tmpfs, fills part of it (random bytes,
# text, zeros) and says MR-GUEST-READY on ttyS0; then stop QEMU and keep its
# memory-backend-file. The copy keeps the file's holes (guest pages QEMU
# never populated) and its written zero pages apart, as the guest left them.
#
#   scripts/bench-guest.sh [OUT [MEM_MIB]]
#
# OUT defaults to bench/cache/linux-guest-1024M.ram (gitignored); the capture
# is skipped when OUT exists. Needs qemu-system-x86_64, busybox-static, cpio
# and a kernel in /boot (scripts/setup-deps.sh installs them). ~30-60 s.
set -eu
cd "$(dirname "$0")/.."
mem=${2:-1024}
out=${1:-bench/cache/linux-guest-${mem}M.ram}
[ -f "$out" ] && { echo "$out"; exit 0; }
kernel=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -1)
[ -n "$kernel" ] || { echo "bench-guest.sh: no /boot/vmlinuz-*-cloud-amd64 (install linux-image-cloud-amd64)" >&2; exit 1; }
busybox=/bin/busybox
[ -x "$busybox" ] && ! ldd "$busybox" >/dev/null 2>&1 ||
    busybox=$(command -v busybox)
command -v cpio >/dev/null || { echo "bench-guest.sh: cpio missing" >&2; exit 1; }

work=$(mktemp -d)
ram=/dev/shm/mr-bench-guest-$$.ram
qpid=
cleanup() {
    [ -n "$qpid" ] && kill "$qpid" 2>/dev/null || true
    rm -rf "$work" "$ram"
}
trap cleanup EXIT INT TERM

mkdir -p "$work/root/bin" "$work/root/proc" "$work/root/sys" "$work/root/dev" "$work/root/mnt"
cp "$busybox" "$work/root/bin/busybox"
cat >"$work/root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=75% tmpfs /mnt
# What a small service leaves in RAM: incompressible data, text, zeros.
dd if=/dev/urandom of=/mnt/random bs=1M count=96 2>/dev/null
i=0
while [ $i -lt 24 ]; do dmesg; cat /proc/kallsyms; i=$((i + 1)); done >/mnt/text 2>/dev/null
dd if=/dev/zero of=/mnt/zero bs=1M count=32 2>/dev/null
sync
echo "MR-GUEST-READY $(wc -c </mnt/random) $(wc -c </mnt/text) $(wc -c </mnt/zero)" >/dev/ttyS0
while :; do sleep 1000; done
EOF
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet) | gzip -1 >"$work/initrd"

qemu-system-x86_64 -nodefaults -display none -accel tcg \
    -M pc,memory-backend=mem -m "${mem}M" \
    -object "memory-backend-file,id=mem,size=${mem}M,mem-path=$ram,share=on" \
    -kernel "$kernel" -initrd "$work/initrd" -append "console=ttyS0 panic=-1" \
    -serial "file:$work/serial" -no-reboot &
qpid=$!
i=0
until grep -q MR-GUEST-READY "$work/serial" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 600 ] || ! kill -0 "$qpid" 2>/dev/null; then
        echo "bench-guest.sh: the guest did not report ready; serial log:" >&2
        tail -20 "$work/serial" >&2
        exit 1
    fi
    sleep 0.5
done
sleep 1
kill "$qpid"
wait "$qpid" 2>/dev/null || true
qpid=
grep MR-GUEST-READY "$work/serial" >&2
mkdir -p "$(dirname "$out")"
# --sparse=auto keeps the source's holes (SEEK_HOLE) and writes its data
# extents as they are, zero blocks included.
cp --sparse=auto "$ram" "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
