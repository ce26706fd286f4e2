#!/bin/sh
# The images of this case, made offline from the test image (scripts/setup-containers.sh):
#   sh images.sh setup    the tag `current` names localhost/kiln-busybox:test
#   sh images.sh rebuild  `current` moves to another image (the same files, one more ENV:
#                         another image id), also named `rebuilt`
#   sh images.sh clean    removes only the names and the image made here (also what a failed
#                         earlier run left); never touches localhost/kiln-busybox:test
set -eu
podman="podman --runtime runc"
base=localhost/kiln-busybox:test
tag=localhost/kiln-e2e-pins:current
rebuilt=localhost/kiln-e2e-pins:rebuilt
box=kiln-e2e-pins-rebuild

id_of() { $podman image inspect --format '{{.Id}}' "$1"; }

clean() {
  $podman rm -f "$box" >/dev/null 2>&1 || true
  # `untag IMAGE NAME` removes that one name; `rmi` of the image made here (one name) deletes it.
  $podman untag "$tag" "$tag" >/dev/null 2>&1 || true
  $podman rmi "$rebuilt" >/dev/null 2>&1 || true
}

case "$1" in
  setup)
    clean
    $podman tag "$base" "$tag"
    ;;
  rebuild)
    $podman rm -f "$box" >/dev/null 2>&1 || true
    $podman create --name "$box" "$base" >/dev/null
    $podman commit --quiet --change 'ENV KILN_E2E=2' "$box" "$rebuilt" >/dev/null
    $podman rm "$box" >/dev/null
    $podman tag "$rebuilt" "$tag"
    if [ "$(id_of "$tag")" = "$(id_of "$base")" ]; then
      echo "the moved tag names the same image as before" >&2
      exit 1
    fi
    ;;
  clean) clean ;;
  *) echo "usage: images.sh setup|rebuild|clean" >&2; exit 2 ;;
esac
