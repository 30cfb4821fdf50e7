#!/usr/bin/env bash
# Installs the Debian packages vmpod needs on the host: build tools for the addon and the
# guest agent, QEMU, the networking tools used by tests and benchmarks, CNI plugins.
# Idempotent; run as root. Installed with the npm package as the `vmpod-setup-host` bin.
#
#   setup-host.sh              every package below: running vmpod, building its native code,
#                              its tests (a checkout, CI)
#   setup-host.sh --runtime    only what running vmpod needs when its shipped native binaries
#                              are used (docs/install.md): QEMU and virtiofsd, the guest build's
#                              tools, volumes, CNI plugins
set -euo pipefail
runtime=(qemu-system-x86 busybox-static lz4 xz-utils kmod e2fsprogs qemu-utils containernetworking-plugins)
case "${1:-}" in
  '') mode=all ;;
  --runtime) mode=runtime ;;
  *) echo "usage: $0 [--runtime]" >&2; exit 2 ;;
esac
packages=(
  build-essential cmake pkg-config libmnl-dev   # addon + static guest agent
  iproute2                                      # ip/tc: tests cross-check every primitive
  containernetworking-plugins                   # CNI plugins in /usr/lib/cni (bridge, host-local, tuning, bandwidth...)
  qemu-system-x86                               # QEMU 7.2 (+ /usr/lib/qemu/virtiofsd from qemu-system-common)
  busybox-static lz4 xz-utils kmod              # guest build: busybox, vmlinux extraction (LZ4, XZ), depmod
  nlohmann-json3-dev                            # guest agent: header-only JSON (static build)
  runc                                          # agent tests: `runc spec` makes a real OCI config.json
  dpdk-dev                                      # vhost-user tests and benchmark: dpdk-testpmd with net_vhost
  e2fsprogs qemu-utils                          # volumes: mkfs.ext4 -d (block rootfs, images), qemu-img (qcow2)
  iperf3                                        # net-throughput benchmark: TCP from a container to a peer netns
  clang-16 libclang-rt-16-dev llvm-16           # guest agent fuzzers (libFuzzer, ASan, UBSan) and llvm-symbolizer for their reports
  gcovr                                         # native coverage report (scripts/coverage-native.sh)
  podman containerd conmon crun                 # OCI runtime tests and benchmark: real callers of vmpod-runtime (docs/oci-runtime.md)
  umoci skopeo                                  # test images: OCI layouts built offline from busybox, oci-archives for ctr import
)
[[ $mode == runtime ]] && packages=("${runtime[@]}")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The guest builder fetches linux-image-cloud-amd64 with apt-get download: apt must know it.
apt-cache show --no-all-versions linux-image-cloud-amd64 >/dev/null 2>&1 || apt-get update -qq
