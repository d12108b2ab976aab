#!/usr/bin/env bash
# Makes sure a Docker engine answers and every base image the offline-buildable Dockerfiles name exists
# locally. Uses the running engine; else, as root on Debian, installs Debian's docker.io and starts
# dockerd. Base images are pulled where a registry answers, else bootstrapped from Debian's archive
# (debootstrap --variant=minbase, docker import) under the same name, so Dockerfiles stay identical for
# real builds. Idempotent: a second run with everything present only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'ensure-docker: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

start_engine() {
  if ! command -v dockerd >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "no Docker engine answers and installing one needs root; start Docker, or run as root on Debian"
    command -v apt-get >/dev/null 2>&1 || die "no Docker engine answers and this is not Debian (no apt-get); install and start Docker"
    log "installing Debian's docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  [ "$(id -u)" = 0 ] || die "dockerd is installed but not running, and starting it needs root"
  log "starting dockerd (log: /var/log/crucible-dockerd.log)"
  nohup dockerd >/var/log/crucible-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    engine_up && return 0
    sleep 1
  done
  die "dockerd did not answer within 60 s; see /var/log/crucible-dockerd.log"
}

# Base images the Dockerfiles name that are built from Debian's archive alone.
offline_bases() {
  node_modules/.bin/tsx -e '
    import { IMAGE_MATRIX, upstreamImages } from "./runtime/src/catalog/image-matrix";
    const bases = new Set(Object.values(IMAGE_MATRIX).filter((f) => f.buildsOffline).flatMap((f) => upstreamImages(f.family)));
    console.log([...bases].join("\n"));'
}

bootstrap_debian() {
  local image=$1 suite
  suite=$(sed -E 's/^debian:([a-z]+).*/\1/' <<<"$image")
  [ "$suite" != "$image" ] || die "cannot bootstrap $image: only debian:<suite>[-slim] images can be made from Debian's archive"
  [ "$(id -u)" = 0 ] || die "$image is missing, no registry answers, and bootstrapping it needs root"
  command -v debootstrap >/dev/null 2>&1 || {
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  local rootfs
  rootfs=$(mktemp -d /var/tmp/crucible-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' RETURN
  log "bootstrapping $image from Debian $suite (about a minute)"
  debootstrap --variant=minbase "$suite" "$rootfs" http://deb.debian.org/debian >/var/log/crucible-debootstrap.log 2>&1 ||
    die "debootstrap of $suite failed; see /var/log/crucible-debootstrap.log"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - "$image" >/dev/null
  log "imported $image"
}

# A root runtime gives each job's /workspace a size limit: a loop-mounted ext4 volume
# (runtime/src/launch/quota-volume.ts) needs mkfs.ext4 (e2fsprogs), losetup and mount (util-linux, mount).
ensure_quota_tools() {
  [ "$(id -u)" = 0 ] || return 0
  command -v mkfs.ext4 >/dev/null 2>&1 && command -v losetup >/dev/null 2>&1 && command -v fallocate >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "job disk quotas need mkfs.ext4, losetup and fallocate; install e2fsprogs and util-linux"
  log "installing e2fsprogs and util-linux (job disk quotas)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq e2fsprogs util-linux mount >/dev/null
}

engine_up || start_engine
ensure_quota_tools
[ -x node_modules/.bin/tsx ] || die "node_modules is missing: run npm ci first"

while read -r image; do
  [ -n "$image" ] || continue
  if docker image inspect "$image" >/dev/null 2>&1; then continue; fi
  if timeout 30 docker pull -q "$image" >/dev/null 2>&1; then log "pulled $image"; continue; fi
  bootstrap_debian "$image"
done < <(offline_bases)
log "engine $(docker version --format '{{.Server.Version}}') ready; base images present"
