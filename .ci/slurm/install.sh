#!/usr/bin/env bash
# Install what the local test Slurm cluster needs (Debian 12). Idempotent: does nothing
# when every package is already installed. Runs `apt-get update` only if the install
# fails without it.
set -euo pipefail

PKGS=(slurm-wlm slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "slurm test cluster: packages already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# Don't let the packages' maintainer scripts try to start services (no init system here).
apt_install() {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        --no-install-recommends "${missing[@]}" >/tmp/slurm-install.$$.log 2>&1
}
if ! apt_install; then
    echo "slurm test cluster: install failed, running apt-get update and retrying" >&2
    $SUDO apt-get update -qq >/dev/null
    if ! apt_install; then
        tail -n 40 /tmp/slurm-install.$$.log >&2
        rm -f /tmp/slurm-install.$$.log
        exit 1
    fi
fi
rm -f /tmp/slurm-install.$$.log
echo "slurm test cluster: installed ${missing[*]}"
