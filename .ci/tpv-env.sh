#!/usr/bin/env bash
# Create (or reuse) a separate venv holding the TPV CLI for the end-to-end rank test.
#
# Why a separate venv: total-perspective-vortex[cli] pulls Galaxy (~1.6 GB, minutes to install) and
# pins libraries the project does not want in its own environment. The venv is cached at a stable path
# so CI and developers pay the install once per machine.
#
# Usage: .ci/tpv-env.sh            -> prints the venv path on stdout (progress goes to stderr)
# Env:   METASCHED_TPV_VENV        venv path (default /var/cache/metasched/tpv-venv)
#        METASCHED_TPV_SPEC        pip requirement (default "total-perspective-vortex[cli]>=3,<4")
#        PYTHON                    interpreter used to create the venv (default python3)
set -euo pipefail

venv="${METASCHED_TPV_VENV:-/var/cache/metasched/tpv-venv}"
spec="${METASCHED_TPV_SPEC:-total-perspective-vortex[cli]>=3,<4}"
python="${PYTHON:-python3}"

works() {
    "$venv/bin/tpv" --help >/dev/null 2>&1
}

if works; then
    echo "$venv"
    exit 0
fi

mkdir -p "$(dirname "$venv")"
# Serialise concurrent callers (parallel test sessions, CI + a developer) on one lock file.
exec 9>"$venv.lock"
flock 9
if works; then
    echo "$venv"
    exit 0
fi

echo "tpv-env: installing $spec into $venv (takes a few minutes)" >&2
rm -rf "$venv"
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet "$spec" >&2

if ! works; then
    echo "tpv-env: $venv/bin/tpv --help failed after install" >&2
    exit 1
fi
echo "$venv"
