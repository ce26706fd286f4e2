#!/usr/bin/env bash
# Installs what kiln-container's podman tests need on a Debian machine, and builds the tiny
# local image they run: `localhost/kiln-busybox:test`.
#
# - apt packages `podman`, `runc` (Debian's default crun fails in these sandboxes, so kiln
#   runs podman with `--runtime runc`) and `busybox-static` — installed only when missing;
# - the image, made without any registry: a rootfs holding Debian's static `/bin/busybox` and a
#   symlink per applet, tarred and `podman import`ed — skipped when the image already exists.
#
# Safe to run again. Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="localhost/kiln-busybox:test"
log() { printf 'setup-containers: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
# busybox-static, not busybox: the image has no libc, so /bin/busybox must be static.
for package in podman runc busybox-static; do
  installed "$package" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
fi

if podman --runtime runc image exists "$IMAGE"; then
  log "image $IMAGE already exists"
else
  log "building $IMAGE from /bin/busybox"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  rootfs="$work/rootfs"
  mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/kiln/work" "$rootfs/kiln/inputs" \
    "$rootfs/kiln/outputs" "$rootfs/etc"
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  # One symlink per applet this busybox build offers (sh, cat, echo, sleep, env, wc...).
  for applet in $("$rootfs/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\n' >"$rootfs/etc/group"
  tar -C "$rootfs" -cf "$work/rootfs.tar" .
  podman --runtime runc import --quiet \
    --change 'ENV PATH=/bin' \
    --change 'CMD ["/bin/sh"]' \
    "$work/rootfs.tar" "$IMAGE" >/dev/null
fi

# A smoke run with the same flags kiln uses, so a broken runtime shows up here, not in a test.
out="$(podman --runtime runc run --rm --network none \
  --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 \
  "$IMAGE" sh -c 'echo kiln-busybox ok')"
[ "$out" = "kiln-busybox ok" ] || { log "smoke run printed: $out"; exit 1; }
log "done: podman runs $IMAGE"
