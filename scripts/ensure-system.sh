#!/usr/bin/env bash
# Install what Quietwire needs from Debian and PyPI, once; a no-op when all is present.
# Debian packages: a JDK and Maven (to assemble and run Kafka from Maven Central jars);
# swtpm and swtpm-tools (the software TPM the tests attest against); libtss2-dev,
# pkg-config and gcc (tpm2-pytss builds from source against the system tpm2-tss);
# chromium (the HTML report is rendered headless in a test); python3.11, python3.11-dev and
# python3.11-venv (the interpreter the project runs on: Debian builds it with profile-guided
# and link-time optimisation, and the ingest's Python runs 10-25% faster on it than on a
# default source build such as pyenv's; see docs/ingest.md, Throughput).
# Rust is checked, never installed: the Prio3 binding (prio3/) builds with the machine's cargo.
set -euo pipefail

APT_PACKAGES=(openjdk-17-jre-headless maven swtpm swtpm-tools libtss2-dev pkg-config gcc chromium
    python3.11 python3.11-dev python3.11-venv)

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

if ! command -v uv >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/uv" ]; then
    echo "==> installing uv"
    if ! python3 -m pip install --quiet --user "uv>=0.5" 2>/dev/null; then
        # Debian's own python3 is externally managed (PEP 668) and refuses --user
        # installs: uv goes into a venv of its own, linked into ~/.local/bin (which the
        # Makefile puts on PATH).
        UV_VENV="$HOME/.local/share/quietwire/uv-venv"
        python3.11 -m venv "$UV_VENV"
        "$UV_VENV/bin/pip" install --quiet "uv>=0.5"
        mkdir -p "$HOME/.local/bin"
        ln -sf "$UV_VENV/bin/uv" "$HOME/.local/bin/uv"
    fi
fi

# Rust for prio3/: prio 0.18.1 declares rust-version 1.89 (pyo3 0.30 needs 1.85). Debian's own
# rustc is older, and nothing here may download a toolchain, so refuse clearly instead.
RUST_MIN="1.89"
CARGO="$(command -v cargo || true)"
if [ -z "$CARGO" ] && [ -x "$HOME/.cargo/bin/cargo" ]; then CARGO="$HOME/.cargo/bin/cargo"; fi
if [ -z "$CARGO" ]; then
    echo "error: cargo not found (looked in PATH and \$HOME/.cargo/bin)." >&2
    echo "       Rust >= $RUST_MIN is needed to build the Prio3 binding in prio3/;" >&2
    echo "       install a toolchain (e.g. with rustup) and run this again." >&2
    exit 1
fi
RUSTC="$(dirname "$CARGO")/rustc"
[ -x "$RUSTC" ] || RUSTC="$(command -v rustc || echo rustc)"
rust_version="$("$RUSTC" --version 2>/dev/null | awk '{print $2}')"
if [ -z "$rust_version" ] || [ "$(printf '%s\n%s\n' "$RUST_MIN" "${rust_version%%-*}" | sort -V | head -n1)" != "$RUST_MIN" ]; then
    echo "error: Rust ${rust_version:-(no rustc next to $CARGO)} is too old; prio3/ needs >= $RUST_MIN." >&2
    echo "       Update the toolchain (e.g. rustup update stable) and run this again." >&2
    exit 1
fi
for tool in fmt clippy; do
    if ! "$CARGO" "$tool" --version >/dev/null 2>&1; then
        echo "error: 'cargo $tool' is missing (make lint runs it on prio3/);" >&2
        echo "       add it to the toolchain (e.g. rustup component add ${tool/fmt/rustfmt})." >&2
        exit 1
    fi
done
