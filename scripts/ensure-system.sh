#!/usr/bin/env bash
# Install what Quietwire needs from Debian and PyPI, once; a no-op when all is present.
# Debian packages: a JDK and Maven (to assemble and run Kafka from Maven Central jars);
# swtpm and swtpm-tools (the software TPM the tests attest against); libtss2-dev,
# pkg-config and gcc (tpm2-pytss builds from source against the system tpm2-tss).
set -euo pipefail

APT_PACKAGES=(openjdk-17-jre-headless maven swtpm swtpm-tools libtss2-dev pkg-config gcc)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "==> installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v uv >/dev/null 2>&1; then
    echo "==> installing uv"
    python3 -m pip install --quiet --user "uv>=0.5" || python3 -m pip install --quiet "uv>=0.5"
fi
