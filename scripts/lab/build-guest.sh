#!/usr/bin/env bash
# Build the QEMU guest used by the lab tests (tests/lib/guest.ts, scripts/lab/run-guest.ts).
#
#   sudo bash scripts/lab/build-guest.sh        # idempotent; output cached in build/lab/
#
# Produces build/lab/vmlinux (the ELF kernel, booted directly by QEMU: much faster under TCG than
# the compressed bzImage) and build/lab/initramfs.cpio (uncompressed newc archive) holding busybox,
# the kernel modules the lab needs, deno and dpdk-testpmd with their shared libraries, and /init
# (scripts/lab/guest-init.sh). The kernel comes from Debian's package via `apt-get download` +
# `dpkg -x`: no kernel package is ever installed on this host.
#
# Environment: LAB_DIR (default build/lab), LAB_KERNEL (a linux-image-*-amd64 package name; default:
# the one linux-image-amd64 depends on), LAB_FORCE=1 (rebuild the initramfs even if up to date).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
LAB=${LAB_DIR:-$REPO/build/lab}
mkdir -p "$LAB"
log() { echo "build-guest: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "build-guest: must run as root (apt-get, device nodes in the initramfs)" >&2
  exit 1
fi

# 1. Host packages: QEMU, a static busybox, DPDK's testpmd (for the comparison runs in the guest).
need=()
for p in qemu-system-x86 busybox-static dpdk-dev xz-utils; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
BUSYBOX=/bin/busybox
DENO=$(readlink -f "$REPO/node_modules/.bin/deno")
if [ ! -x "$DENO" ]; then
  echo "build-guest: $REPO/node_modules/.bin/deno missing: run 'npm ci' in the repo first" >&2
  exit 1
fi
TESTPMD=$(command -v dpdk-testpmd)

# 2. Kernel: download and unpack Debian's image package (never installed).
KPKG=${LAB_KERNEL:-$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)}
KVER=${KPKG#linux-image-}
KDIR=$LAB/kernel-$KVER
if [ ! -f "$KDIR/boot/vmlinuz-$KVER" ]; then
  log "fetching $KPKG"
  mkdir -p "$LAB/dl"
  rm -f "$LAB"/dl/"$KPKG"_*.deb
  (cd "$LAB/dl" && apt-get download -q "$KPKG" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
  deb=$(ls "$LAB"/dl/"$KPKG"_*.deb)
  rm -rf "$KDIR.tmp" && mkdir -p "$KDIR.tmp"
  dpkg -x "$deb" "$KDIR.tmp"
  rm -rf "$KDIR" && mv "$KDIR.tmp" "$KDIR"
  rm -f "$deb"
fi

# 3. The ELF vmlinux: the bzImage carries it as an xz stream (magic FD 37 7A 58 5A 00).
if [ ! -s "$LAB/vmlinux-$KVER" ]; then
  log "extracting vmlinux"
  bz=$KDIR/boot/vmlinuz-$KVER
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" | head -1 | cut -d: -f1)
  [ -n "$off" ] || { echo "build-guest: no xz payload in $bz" >&2; exit 1; }
  # xz complains about the bytes after the stream; the ELF check below is what counts.
  tail -c +"$((off + 1))" "$bz" | xz -dcq >"$LAB/vmlinux.tmp" 2>/dev/null || true
  if [ "$(head -c 4 "$LAB/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" != 7f454c46 ]; then
    echo "build-guest: the extracted kernel is not an ELF file" >&2
    exit 1
  fi
  mv "$LAB/vmlinux.tmp" "$LAB/vmlinux-$KVER"
fi
ln -sfn "vmlinux-$KVER" "$LAB/vmlinux"

# 4. The initramfs. Rebuilt when an input changed (this script, /init, deno, kernel version).
STAMP="$KVER $(sha256sum "$0" "$REPO/scripts/lab/guest-init.sh" | cut -c1-16 | tr '\n' ' ')"
STAMP="$STAMP $(stat -c %s-%Y "$DENO" "$TESTPMD" | tr '\n' ' ')"
if [ "${LAB_FORCE:-0}" != 1 ] && [ -s "$LAB/initramfs.cpio" ] &&
  [ "$(cat "$LAB/initramfs.stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "up to date: $LAB/vmlinux $LAB/initramfs.cpio"
  exit 0
fi
log "building initramfs"
ROOT=$LAB/root
rm -rf "$ROOT"
mkdir -p "$ROOT"/{usr/bin,usr/sbin,usr/lib,usr/lib64,proc,sys,dev,run,tmp,root,etc,mnt,vpmd,lab}
ln -s usr/bin "$ROOT/bin"
ln -s usr/sbin "$ROOT/sbin"
ln -s usr/lib "$ROOT/lib"
ln -s usr/lib64 "$ROOT/lib64"
mkdir -p "$ROOT/var"
ln -s /run "$ROOT/var/run"
chmod 1777 "$ROOT/tmp"

# Copy a host path into the image keeping symlinks as symlinks (and copying what they point to).
copy_path() {
  local p=$1
  [ -e "$ROOT$p" ] || [ -L "$ROOT$p" ] && return 0
  local d
  d=$(dirname "$p")
  # Resolve symlinked directories on the host side (Debian's merged /usr: /lib -> usr/lib).
  local rd
  rd=$(readlink -f "$d")
  if [ "$rd" != "$d" ]; then
    copy_path "$rd/$(basename "$p")"
    return 0
  fi
  mkdir -p "$ROOT$d"
  if [ -L "$p" ]; then
    local t
    t=$(readlink "$p")
    ln -s "$t" "$ROOT$p"
    case $t in
      /*) copy_path "$t" ;;
      *) copy_path "$d/$t" ;;
    esac
  else
    cp "$p" "$ROOT$p"
  fi
}
# A binary or library and every shared library it loads.
copy_with_libs() {
  copy_path "$1"
  local lib
  for lib in $(ldd "$1" 2>/dev/null | grep -o '/[^ ]*' || true); do
    copy_path "$lib"
  done
}

# busybox: one static binary plus a link per applet.
cp "$BUSYBOX" "$ROOT/usr/bin/busybox"
for a in $("$BUSYBOX" --list); do
  [ "$a" = busybox ] || [ -e "$ROOT/usr/bin/$a" ] || ln -s busybox "$ROOT/usr/bin/$a"
done

# deno (the npm package's binary, i.e. the repo's pinned version).
copy_with_libs /lib64/ld-linux-x86-64.so.2
cp "$DENO" "$ROOT/usr/bin/deno"
for lib in $(ldd "$DENO" | grep -o '/[^ ]*'); do copy_path "$lib"; done

# dpdk-testpmd, its libraries and the PMD plugins it needs. EAL loads every plugin in its
# plugin directory, so only the few we use go there (with Debian's real-file + symlink layout).
copy_with_libs "$TESTPMD"
PMDDIR=$(dirname "$(ldd "$TESTPMD" | grep -o '/[^ ]*/pmds-[^/]*/' | head -1)x")
for plug in net_virtio mempool_ring bus_pci bus_vdev; do
  for f in "$PMDDIR"/librte_"$plug".so*; do copy_with_libs "$f"; done
done
copy_path /etc/ld.so.cache

# Kernel modules the lab needs, with their dependencies (busybox depmod on the unpacked tree).
MODS="virtio_pci virtio_net uio uio_pci_generic 9p 9pnet_virtio bridge"
MROOT=$KDIR/lib/modules/$KVER
[ -s "$MROOT/modules.dep" ] || "$BUSYBOX" depmod -b "$KDIR" "$KVER"
want=""
for m in $MODS; do
  line=$(grep -E "/$m\.ko(\.[a-z]+)?:" "$MROOT/modules.dep" | head -1 || true)
  [ -n "$line" ] || { echo "build-guest: module $m not in $KPKG" >&2; exit 1; }
  want="$want ${line//:/}"
done
mkdir -p "$ROOT/lib/modules/$KVER"
for f in $(echo "$want" | tr ' ' '\n' | sort -u); do
  mkdir -p "$ROOT/lib/modules/$KVER/$(dirname "$f")"
  cp "$MROOT/$f" "$ROOT/lib/modules/$KVER/$f"
done
cp "$MROOT/modules.order" "$MROOT/modules.builtin" "$ROOT/lib/modules/$KVER/" 2>/dev/null || true
"$BUSYBOX" depmod -b "$ROOT" "$KVER"
echo "$MODS" >"$ROOT/etc/lab-modules"

# /init and a few files programs expect.
cp "$REPO/scripts/lab/guest-init.sh" "$ROOT/init"
chmod 755 "$ROOT/init"
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"
echo "127.0.0.1 localhost" >"$ROOT/etc/hosts"
echo "$KVER" >"$ROOT/etc/lab-kernel"

# Uncompressed newc archive: the kernel unpacks it much faster under TCG than an xz/gzip one.
(cd "$ROOT" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) >"$LAB/initramfs.cpio.tmp"
mv "$LAB/initramfs.cpio.tmp" "$LAB/initramfs.cpio"
echo "$STAMP" >"$LAB/initramfs.stamp"
rm -rf "$ROOT"
log "done: $LAB/vmlinux ($(du -h "$LAB/vmlinux-$KVER" | cut -f1)) $LAB/initramfs.cpio ($(du -h "$LAB/initramfs.cpio" | cut -f1))"
