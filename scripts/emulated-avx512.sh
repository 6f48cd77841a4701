#!/usr/bin/env bash
# Runs test binaries on an emulated CPU, for machines that lack its instructions: the
# AVX-512 VNNI kernel paths (Zen 3 and older lack them) and the AVX-VNNI ones on a CPU
# without AVX-512 (the VEX-encoded vpdpbusd of Intel's client cores, which no AVX-512
# machine's `avxvnni` run can show is chosen and correct there) are otherwise tested only
# where the hardware has them. The test binary is the init process of a Debian Linux
# kernel booted in Bochs 3.0 (Debian 13's package; bookworm's 2.7 reports a PKRU save area
# the kernel rejects and so turns AVX off), emulating (EMU_CPU):
#   tigerlake (default)  Intel Tiger Lake: AVX-512F/BW/VL and VNNI; SQUEEZE_ISA=avx512vnni,
#                        recorded in results/emulated-avx512.json
#   arrow_lake           Intel Arrow Lake: AVX2, AVX-VNNI, no AVX-512; SQUEEZE_ISA=avxvnni,
#                        recorded in results/emulated-avxvnni.json
# Bochs executes every instruction in software: correctness only, never timings.
# Everything comes from Debian's package archive: Bochs and its glibc from Debian 13,
# unpacked into target/emu; the kernel image, unpacked there too, and the apt packages
# below (needs root) from the machine's own Debian 12.
#   usage: [EMU_CPU=arrow_lake] bash scripts/emulated-avx512.sh [TEST [FILTER...]]
#     TEST: an integration test of crates/squeeze/tests, or `lib` for the kernels' own
#     exactness tests inside the crate (src/ops/tests)
#     e.g. bash scripts/emulated-avx512.sh lib offset_int8 block_scaled
# It fails unless the kernel saw the model's flag (avx512_vnni; avx_vnni and no avx512f)
# and the tests passed with its SQUEEZE_ISA; either way it records what ran.
# A boot takes about 2 minutes on a 2-core Zen 3; the tests themselves run ~50x slower than
# natively. BOCHS_TIMEOUT (seconds, default 1800) bounds the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
# per model: Bochs' name, its description, the path forced, the flag the kernel must
# report (and, for arrow_lake, one it must not), the record
case "${EMU_CPU:-tigerlake}" in
  tigerlake)
    model=tigerlake what="Intel Tiger Lake model (AVX-512F/BW/VL, VNNI)" isa=avx512vnni
    need_flag=avx512_vnni absent_flag="" record=results/emulated-avx512.json ;;
  arrow_lake)
    model=arrow_lake what="Intel Arrow Lake model (AVX2, AVX-VNNI, no AVX-512)" isa=avxvnni
    need_flag=avx_vnni absent_flag=avx512f record=results/emulated-avxvnni.json ;;
  *) echo "EMU_CPU=${EMU_CPU}: expected tigerlake or arrow_lake" >&2; exit 2 ;;
esac
test_name="${1:-lib}"
shift || true
filters=("$@")
emu=target/emu
mkdir -p "$emu"
emu=$(cd "$emu" && pwd)
archive=http://deb.debian.org/debian

need=()
# with the shared libraries Debian 13's bochs links (their Debian 12 versions)
for p in grub-pc-bin xorriso mtools busybox-static cpio curl xz-utils vgabios libltdl7 \
  libsamplerate0 libgtk-3-0 libpulse0 libasound2 libreadline8 libglib2.0-0 libpango-1.0-0; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; fi

unpack() {  # .deb -> directory, whole or not at all
  dpkg -x "$1" "$2.tmp" && mv "$2.tmp" "$2"
}
# Debian 13 packages by name, from its index (versions move; the names do not)
deb() {  # package -> unpacked into $emu/root-<package>
  local dir="$emu/root-$1"
  [[ -d $dir ]] && return
  if [[ ! -f $emu/trixie.txt ]]; then
    curl -fsS "$archive/dists/trixie/main/binary-amd64/Packages.xz" | xz -dc > "$emu/trixie.tmp"
    mv "$emu/trixie.tmp" "$emu/trixie.txt"
  fi
  local file
  file=$(awk -v p="$1" '$1=="Package:"{on=($2==p)} on&&$1=="Filename:"{print $2; exit}' "$emu/trixie.txt")
  [[ -n $file ]] || { echo "no Debian 13 package $1" >&2; exit 1; }
  curl -fsS "$archive/$file" -o "$emu/$1.deb"
  unpack "$emu/$1.deb" "$dir"
}
for p in bochs bochsbios libc6; do deb "$p"; done
# the kernel is this machine's (Debian 12's) current 6.1 image, unpacked, not installed
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
if [[ ! -d $emu/root-kernel ]]; then
  (cd "$emu" && apt-get download -q "$kpkg" >/dev/null 2>&1)
  unpack "$emu/${kpkg}"_*.deb "$emu/root-kernel"
fi
vmlinuz=$(ls "$emu"/root-kernel/boot/vmlinuz-*)
# Debian 13's bochs needs its glibc: a wrapper runs it with that loader
lib="$emu/root-libc6/usr/lib/x86_64-linux-gnu"
{
  echo '#!/bin/sh'
  echo "export LTDL_LIBRARY_PATH='$emu/root-bochs/usr/lib/x86_64-linux-gnu/bochs/plugins'"
  echo "export BXSHARE='$emu/root-bochs/usr/share/bochs'"
  echo "exec '$lib/ld-linux-x86-64.so.2' --library-path '$lib:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu' '$emu/root-bochs/usr/bin/bochs-bin' \"\$@\""
} > "$emu/bochs"
chmod +x "$emu/bochs"

# the test binary, its shared libraries and a busybox shell as the initramfs
if [[ $test_name == lib ]]; then target=(-p squeeze --lib); kind=lib; else target=(--test "$test_name"); kind=test; fi
bin=$(cargo test --release "${target[@]}" --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == [sys.argv[1]] and m.get("executable"):
        print(m["executable"])' "$kind")
[[ -x $bin ]] || { echo "no test binary for $test_name" >&2; exit 1; }
rootfs="$emu/initramfs"
rm -rf "$rootfs" && mkdir -p "$rootfs"/{bin,proc,dev,tmp}
# what tests read by absolute path: the committed models and fixtures, and Fashion-MNIST
# (the MiniLM model is left out: its tests skip without it, and it is 90 MB)
for d in "$PWD/zoo" "$PWD/crates/squeeze/tests/fixtures" /usr/share/datasets/fashion-mnist; do
  if [[ -d $d ]]; then mkdir -p "$rootfs$(dirname "$d")" && cp -r "$d" "$rootfs$d"; fi
done
cp "$bin" "$rootfs/test"
for l in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$rootfs$(dirname "$l")" && cp -L "$l" "$rootfs$l"
done
cp /bin/busybox "$rootfs/bin/busybox"
for t in sh mount grep sort tr sleep poweroff; do ln -s busybox "$rootfs/bin/$t"; done
{
  echo '#!/bin/sh'
  echo 'export PATH=/bin'
  echo 'mount -t proc proc /proc'
  echo 'echo "emu-flags: $(grep -o -w -E "avx2|avx_vnni|avx512f|avx512bw|avx512vl|avx512_vnni" /proc/cpuinfo | sort -u | tr "\n" " ")"'
  printf 'SQUEEZE_ISA=%s RUST_TEST_THREADS=1 /test' "$isa"
  for f in "${filters[@]}"; do printf ' %q' "$f"; done
  echo
  echo 'echo "emu-exit: $?"'
  echo 'sleep 3; poweroff -f'  # let the console drain first
} > "$rootfs/init"
chmod +x "$rootfs/init"
(cd "$rootfs" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$emu/initrd.gz"

# a GRUB CD with the kernel on the serial console. The kernel flags: Bochs' Tiger Lake
# hangs Linux 6.1 once its alternatives use some of the newer features (fsrm and the other
# cleared ones), and its PKRU state is inconsistent; none of them matter to the tests
iso="$emu/iso"
rm -rf "$iso" && mkdir -p "$iso/boot/grub"
cp "$vmlinuz" "$iso/boot/vmlinuz" && cp "$emu/initrd.gz" "$iso/boot/initrd.gz"
cat > "$iso/boot/grub/grub.cfg" <<'EOF'
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "test" {
  linux /boot/vmlinuz console=ttyS0,115200 rdinit=/init mitigations=off nopku idle=halt clearcpuid=fsrm,umip,gfni,vaes,vpclmulqdq,movdiri,movdir64b,rdpid lapic=notscdeadline tsc=unstable quiet
  initrd /boot/initrd.gz
}
EOF
grub-mkrescue -o "$emu/boot.iso" "$iso" >/dev/null 2>&1
cat > "$emu/bochsrc" <<EOF
megs: 1024
cpu: model=$model, count=1, ips=400000000
clock: sync=none, time0=local
romimage: file=$emu/root-bochsbios/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
display_library: rfb, options="timeout=0"
ata0-master: type=cdrom, path=$emu/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$emu/serial.txt
log: $emu/bochs.log
panic: action=fatal
error: action=report
info: action=ignore
EOF
echo c > "$emu/continue"
rm -f "$emu/serial.txt"
echo "booting $(basename "$bin") in Bochs ($model); serial console: $emu/serial.txt" >&2
timeout "${BOCHS_TIMEOUT:-1800}" "$emu/bochs" -q -f "$emu/bochsrc" -rc "$emu/continue" </dev/null >"$emu/bochs.out" 2>&1 || true
out=$(tr -d '\r' < "$emu/serial.txt" 2>/dev/null || true)
grep -a -E '^(emu-flags|running|test |test result|emu-exit)|panicked' <<<"$out" >&2 || true
# the record (what ran, on which flags, with what outcome)
printf '%s\n' "$out" > "$emu/serial.clean"
host="$(lscpu | sed -n 's/^Model name: *//p') (family $(lscpu | sed -n 's/^CPU family: *//p'), model $(lscpu | sed -n 's/^Model: *//p'))"
emulated="Bochs 3.0, $what, SQUEEZE_ISA=$isa"
prefix=$([[ -n ${EMU_CPU:-} ]] && echo "EMU_CPU=$EMU_CPU " || true)
python3 - "$test_name" "$host" "${filters[*]}" "$emu/serial.clean" "$emulated" "$need_flag" "$absent_flag" "$record" "$prefix" <<'PY'
import json, re, sys
name, host, filters, path, emulated, need, absent, record, prefix = sys.argv[1:10]
args = " ".join(x for x in (name, filters) if x)
out = open(path).read()
flags = re.search(r"^emu-flags: (.*)$", out, re.M)
code = re.search(r"^emu-exit: (\d+)$", out, re.M)
# a test's outcome ends its "test NAME ... " line, or, when the test wrote to stderr first
# (a "NOT RUN" line for a path this CPU lacks), stands alone on a later line
lines = out.split("\n")
OUTCOMES = ("ok", "FAILED", "ignored")
tests = []
for i, line in enumerate(lines):
    m = re.match(r"^test (\S+) \.\.\. ?(.*)$", line)
    if not m:
        continue
    rest = m.group(2).strip()
    if rest not in OUTCOMES:
        later = (x.strip() for x in lines[i + 1:] if x.strip() in OUTCOMES or x.startswith("test "))
        rest = next(later, "unfinished")
        rest = rest if rest in OUTCOMES else "unfinished"
    tests.append((m.group(1), rest))
rec = {
    "command": prefix + "bash scripts/emulated-avx512.sh" + (" " + args if args else ""),
    "test_binary": name,
    "emulated_cpu": emulated,
    "cpu_flags_seen": flags.group(1).split() if flags else [],
    "host_cpu": host,
    "tests": [{"name": t, "result": r} for t, r in tests],
    "passed": sum(r == "ok" for _, r in tests),
    "failed": sum(r != "ok" for _, r in tests),
    "exit": int(code.group(1)) if code else None,
}
seen = rec["cpu_flags_seen"]
rec["ok"] = bool(rec["exit"] == 0 and need in seen and (not absent or absent not in seen)
                 and rec["failed"] == 0 and tests)
json.dump(rec, open(record, "w"), indent=2)
PY
flags=$(grep -a -m1 '^emu-flags:' <<<"$out" || true)
grep -q -w "$need_flag" <<<"$flags" || { echo "the emulated CPU did not report $need_flag" >&2; exit 1; }
if [[ -n $absent_flag ]] && grep -q -w "$absent_flag" <<<"$flags"; then
  echo "the emulated CPU reported $absent_flag, which this model must lack" >&2; exit 1
fi
grep -a -q '^emu-exit: 0$' <<<"$out" || { echo "the tests failed or did not finish (see $emu/serial.txt)" >&2; exit 1; }
echo "passed on the emulated $model with SQUEEZE_ISA=$isa ($record)" >&2
