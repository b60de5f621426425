#!/usr/bin/env bash
# Installs what mosto needs on Debian, idempotently: Debian packages that are
# missing, then a virtualenv (.venv) with mosto and its test tools.
# Re-running it does nothing when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    clang llvm libbpf-dev libbpf1 bpftool libelf-dev gcc-multilib
    iproute2 ethtool tcpdump nftables python3-nftables haproxy
    python3 python3-venv python3-dev
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "mosto: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's python3 (not a pyenv shim): the venv sees Debian's site packages.
VENV=.venv
if [[ ! -x $VENV/bin/python ]]; then
    echo "mosto: creating $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp=$VENV/.mosto-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "mosto: installing Python packages into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[test,bmv2,bench]'
    touch "$stamp"
fi
