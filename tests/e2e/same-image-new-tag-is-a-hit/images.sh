#!/bin/sh
# The image names of this case, both on the test image (scripts/setup-containers.sh):
#   sh images.sh tag NAME   names localhost/kiln-busybox:test localhost/kiln-e2e-pins:NAME
#   sh images.sh clean      removes the names `a` and `b` (also what a failed earlier run
#                           left); the image itself keeps its own name
set -eu
podman="podman --runtime runc"
base=localhost/kiln-busybox:test

clean() {
  for name in a b; do
    # `untag IMAGE NAME` removes that one name only.
    $podman untag "localhost/kiln-e2e-pins:$name" "localhost/kiln-e2e-pins:$name" \
      >/dev/null 2>&1 || true
  done
}

case "$1" in
  tag) $podman tag "$base" "localhost/kiln-e2e-pins:$2" ;;
  clean) clean ;;
  *) echo "usage: images.sh tag NAME | clean" >&2; exit 2 ;;
esac
