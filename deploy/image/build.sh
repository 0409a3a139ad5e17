#!/usr/bin/env bash
# Builds the cdrvault container image on a machine that reaches Debian's
# package mirror but no container registry:
#
#   1. base: a Debian bookworm root file system made with
#      `debootstrap --variant=minbase` and brought up to date with
#      bookworm-updates and bookworm-security, imported as
#      localhost/cdrvault-base and referred to by its digest (cached: later
#      runs reuse it for a week);
#   2. build: deploy/Dockerfile with that base and a binary built outside
#      the image (--binary), or compiled inside a Rust image (--rust-image);
#   3. smoke test: a RUN step of the Dockerfile runs the binary as the
#      service user (`--version`, `keys init`), so a build that succeeds
#      has passed it;
#   4. run: `podman run --rm IMAGE --version` (where the default runtime is
#      refused, again with runc and resource limits no higher than this
#      shell's), then `serve` in a container (no Kafka reachable), its
#      HEALTHCHECK, and a stop by SIGTERM. A sandbox that refuses to run
#      containers is reported and does not fail the script; a container
#      that runs but fails these checks does.
#
# Usage: deploy/image/build.sh [--binary PATH] [--tag NAME]
#                              [--base-image NAME@sha256:DIGEST]
#                              [--rust-image NAME@sha256:DIGEST]
#                              [--save FILE.tar]
#
#   --binary PATH     the cdrvault binary to put in (default target/release/cdrvault);
#                     a stripped copy goes in. It must be built against glibc 2.36
#                     or older (Debian bookworm, as here)
#   --rust-image REF  compile inside the image instead, from this pinned Rust image
#   --base-image REF  a pinned base from a registry instead of the debootstrap base
#   --tag NAME        the image's name (default localhost/cdrvault:<version>)
#   --save FILE.tar   also write the image as an archive (`podman load -i`, `docker load -i`)
#
# Images live in a storage of their own under the cache directory
# ${XDG_CACHE_HOME:-$HOME/.cache}/cdrvault-image, with the overlay driver
# where the kernel lets this process mount overlays and vfs (no mounts,
# full copies) elsewhere; CDRVAULT_IMAGE_STORAGE_DRIVER=vfs forces vfs. The
# script prints the podman options that reach that storage. Needs root
# (debootstrap, rootful podman); installs debootstrap, podman, runc and
# binutils from Debian if missing.
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "$0")/../.."

binary=target/release/cdrvault
tag=
base_ref=
rust_image=
save=
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2
      case "$binary" in /*) ;; *) binary=$caller_dir/$binary ;; esac ;;
    --tag) tag=${2:?--tag needs a name}; shift 2 ;;
    --base-image) base_ref=${2:?--base-image needs a reference}; shift 2 ;;
    --rust-image) rust_image=${2:?--rust-image needs a reference}; shift 2 ;;
    --save) save=${2:?--save needs a file}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# A reference is pinned when it ends in a digest: name[:tag]@sha256:<64 hex>.
pinned() { [[ "$1" =~ @sha256:[0-9a-f]{64}$ ]]; }
for ref in "$base_ref" "$rust_image"; do
  if [ -n "$ref" ] && ! pinned "$ref"; then
    echo "refused: $ref is not pinned by digest; pass name:tag@sha256:<digest>" >&2
    echo "(find it where the registry is reachable: skopeo inspect --format '{{.Digest}}' docker://NAME:TAG)" >&2
    exit 2
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "refused: run as root (debootstrap and rootful podman need it)" >&2
  exit 2
fi

started=$SECONDS
cache=${XDG_CACHE_HOME:-$HOME/.cache}/cdrvault-image
mkdir -p "$cache"
log() { printf '[%4ds] %s\n' "$((SECONDS - started))" "$*"; }
status_base=skipped status_build=skipped status_smoke=skipped status_run=skipped status_serve=skipped
workdirs=()
cleanup() {
  local dir
  for dir in "${workdirs[@]}"; do
    # A debootstrap cut short leaves /proc mounted in its root.
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n 1 umount -l
    rm -rf --one-file-system "$dir"
  done
}
trap cleanup EXIT

# --- tools -----------------------------------------------------------------
# runc: crun, podman's default runtime in Debian 12, refuses a host whose
# cgroups are mounted in hybrid mode (v1 controllers beside a v2 mount), as
# in some containers and VMs; runc runs there.
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
[ -n "$base_ref" ] || command -v debootstrap >/dev/null || missing+=(debootstrap)
[ -n "$rust_image" ] || command -v strip >/dev/null || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- storage ---------------------------------------------------------------
# One storage for everything this script makes, apart from the host's
# default podman storage (whose driver may differ), one directory per
# driver since a storage cannot change driver.
driver=${CDRVAULT_IMAGE_STORAGE_DRIVER:-}
if [ -z "$driver" ]; then
  probe=$(mktemp -d)
  workdirs+=("$probe")
  mkdir "$probe"/{lower,upper,work,merged}
  if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
    umount "$probe/merged"
    driver=overlay
  else
    driver=vfs
  fi
fi
podman=(podman --root "$cache/storage-$driver" --runroot "$cache/run-$driver" --storage-driver "$driver")

# --- 1. base ---------------------------------------------------------------
# The base is Debian bookworm with its updates and security updates of the
# day it was made; it is made again once it is a week old
# (CDRVAULT_IMAGE_BASE_MAX_AGE_DAYS).
base_name=localhost/cdrvault-base
base_tag=$base_name:bookworm
rootfs_tar=$cache/bookworm-minbase.tar
max_age=${CDRVAULT_IMAGE_BASE_MAX_AGE_DAYS:-7}
if [ -n "$base_ref" ]; then
  status_base="given"
else
  if [ -e "$rootfs_tar" ] && [ -n "$(find "$rootfs_tar" -mmin +"$((max_age * 24 * 60))")" ]; then
    log "base: older than $max_age days, made again"
    rm -f "$rootfs_tar"
    "${podman[@]}" rmi --force "$base_tag" >/dev/null 2>&1 || true
  fi
  if "${podman[@]}" image exists "$base_tag"; then
    status_base=cached
  else
    if [ ! -s "$rootfs_tar" ]; then
      log "base: debootstrap --variant=minbase bookworm (from deb.debian.org)"
      root=$(mktemp -d "$cache/rootfs.XXXXXX")
      workdirs+=("$root")
      debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; echo "debootstrap failed (log: $cache/debootstrap.log)" >&2; exit 1; }
      # The suites debian:bookworm-slim has beside bookworm: its updates
      # and security updates, applied now.
      printf 'deb http://deb.debian.org/debian %s main\n' bookworm bookworm-updates >"$root/etc/apt/sources.list"
      echo 'deb http://deb.debian.org/debian-security bookworm-security main' >>"$root/etc/apt/sources.list"
      cp /etc/resolv.conf "$root/etc/resolv.conf"
      { chroot "$root" apt-get update -qq && DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get upgrade -y -qq; } \
        >>"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; echo "updating the base failed (log: $cache/debootstrap.log)" >&2; exit 1; }
      # What debian:bookworm-slim also leaves out: the downloaded packages
      # and package lists (apt-get update fetches them again when needed);
      # and the host's resolver configuration (a container runtime mounts
      # its own).
      rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
      : >"$root/etc/resolv.conf"
      # mktemp made the directory 0700; it becomes the image's /.
      chmod 0755 "$root"
      tar -C "$root" --numeric-owner -cf "$rootfs_tar.tmp" .
      mv "$rootfs_tar.tmp" "$rootfs_tar"
      status_base=debootstrapped
    else
      status_base="imported from cache"
    fi
    log "base: podman import -> $base_tag"
    "${podman[@]}" import --quiet "$rootfs_tar" "$base_tag" >/dev/null
  fi
  digest=$("${podman[@]}" image inspect --format '{{.Digest}}' "$base_tag")
  base_ref=$base_name@$digest
  pinned "$base_ref" || { echo "the base image has no sha256 digest ($digest)" >&2; exit 1; }
fi
log "base: $base_ref ($status_base; storage driver $driver)"

# --- 2. build (and 3. the smoke test, a RUN step) --------------------------
build_args=(--build-arg "BASE_IMAGE=$base_ref")
if [ -n "$rust_image" ]; then
  build_args+=(--build-arg "RUST_IMAGE=$rust_image")
  what="compiled inside $rust_image"
else
  [ -x "$binary" ] || { echo "no binary at $binary: build it (cargo build --release --locked --bin cdrvault) or pass --binary" >&2; exit 1; }
  prebuilt=$cache/prebuilt
  rm -rf "$prebuilt"
  mkdir -p "$prebuilt"
  strip --strip-all -o "$prebuilt/cdrvault" "$binary"
  # A build context named like the stage `compiled` replaces that stage.
  build_args+=(--build-context "compiled=$prebuilt")
  what="$binary ($(du -h "$binary" | cut -f1), stripped $(du -h "$prebuilt/cdrvault" | cut -f1), sha256 $(sha256sum "$prebuilt/cdrvault" | cut -c1-12))"
fi
if [ -z "$tag" ]; then
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
  tag=localhost/cdrvault:${version:-dev}
fi
log "build: $tag, binary: $what"
# chroot isolation: the RUN steps need no user namespace, cgroup or network
# setup from the sandbox. The docker format keeps the HEALTHCHECK (OCI
# images have no field for it). --pull=never: every base is local or pinned.
build_log=$cache/build.log
if "${podman[@]}" build --isolation=chroot --format docker --pull=never \
    "${build_args[@]}" -f deploy/Dockerfile -t "$tag" . >"$build_log" 2>&1; then
  status_build=ok
  if grep -E '^cdrvault [0-9]|^initialised keys' "$build_log" | sed 's/^/  smoke test: /'; then
    status_smoke=ok
  else
    # A cached layer: this binary on this base passed it in an earlier build.
    status_smoke="ok (cached)"
  fi
else
  tail -30 "$build_log" >&2
  # The smoke test is the RUN step that starts with `cdrvault --version`.
  if grep -q '^Error: building at STEP "RUN cdrvault --version' "$build_log"; then
    status_build="ok up to the smoke test"
    status_smoke=failed
  else
    status_build=failed
  fi
  echo "summary: base=$status_base build=$status_build smoke-test=$status_smoke run=skipped binary=$what (log: $build_log)"
  exit 1
fi
id=$("${podman[@]}" image inspect --format '{{.Id}}' "$tag")
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$tag")
log "build: $tag = ${id:0:12}, $((size / 1024 / 1024)) MiB"

if [ -n "$save" ]; then
  rm -f "$save"
  "${podman[@]}" save --quiet --format docker-archive -o "$save" "$tag"
  log "saved: $save"
fi

# --- 4. run ----------------------------------------------------------------
# --network=none: these checks need only the container's loopback, and a
# sandbox may have no network plugins to give it more.
run_log=$cache/run.log
: >"$run_log"
last_error() { grep -v '^$' "$run_log" | grep -v 'level=error msg=".*systemd' | tail -n 1; }
run_opts=(--network=none --no-healthcheck)
if "${podman[@]}" run --rm "${run_opts[@]}" "$tag" --version >>"$run_log" 2>&1; then
  status_run="ok"
else
  reason=$(last_error)
  echo "podman run refused in this sandbox: $reason"
  status_run="refused ($reason)"
  # A sandbox without CAP_SYS_RESOURCE refuses the resource limits podman
  # asks for by default (above its own), and crun refuses hybrid cgroups:
  # runc with limits no higher than this shell's may still run.
  run_opts+=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Sn)" --ulimit nproc=4096:4096)
  if "${podman[@]}" --runtime runc run --rm "${run_opts[@]}" "$tag" --version >>"$run_log" 2>&1; then
    podman+=(--runtime runc)
    status_run="ok with runc and lowered rlimits (the default refused: $reason)"
  else
    status_run="$status_run; with runc and lowered rlimits too ($(last_error))"
  fi
fi
log "run: $status_run"

if [[ "$status_run" == ok* ]]; then
  # serve with nothing to ingest from (Kafka on a closed port): the HTTP
  # endpoints, the HEALTHCHECK, and a clean exit on SIGTERM.
  # The image's HEALTHCHECK runs by hand (podman healthcheck run), without
  # the systemd timer podman would otherwise create for it.
  name=cdrvault-check-$$
  serve_opts=("${run_opts[@]/--no-healthcheck/--health-interval=disable}")
  if "${podman[@]}" run -d --name "$name" "${serve_opts[@]}" -e CDRVAULT_KAFKA__BROKERS=127.0.0.1:9 \
      --entrypoint bash "$tag" -c 'cdrvault keys init && exec cdrvault serve' >>"$run_log" 2>&1; then
    healthy=no
    for _ in $(seq 1 30); do
      if "${podman[@]}" healthcheck run "$name" >>"$run_log" 2>&1; then healthy=yes; break; fi
      sleep 1
    done
    t0=$SECONDS
    "${podman[@]}" stop -t 120 "$name" >>"$run_log" 2>&1 || true
    stop_s=$((SECONDS - t0))
    code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$name" 2>/dev/null || echo '?')
    "${podman[@]}" logs "$name" >>"$run_log" 2>&1 || true
    "${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true
    if [ "$healthy" = yes ] && [ "$code" = 0 ]; then
      status_serve="ok (healthy; SIGTERM: exit 0 after ${stop_s}s)"
    else
      status_serve="failed (healthy: $healthy; exit code after SIGTERM: $code; log: $run_log)"
    fi
  else
    status_serve="failed to start ($(last_error))"
  fi
  log "serve check: $status_serve"
fi

log "use it: ${podman[*]} run ${run_opts[*]} $tag"
echo "summary: base=$status_base build=$status_build smoke-test=$status_smoke run=$status_run serve-check=$status_serve binary=$what time=$((SECONDS - started))s"
if [[ "$status_serve" == failed* ]]; then
  exit 1
fi
