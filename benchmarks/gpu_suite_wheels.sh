#!/usr/bin/env bash
# The wheels benchmarks/gpu_suite.py needs on the device machine beyond what that machine has (torch 2.11,
# transformers 5.17, huggingface_hub 1.33, tokenizers 0.23, sentencepiece, protobuf, psutil, Python 3.12, no PyAV,
# no network; see /work/.library/device/KINDS.md): this package (built from the working tree now) and
# transformers 5.24 (this package needs >= 5.23: 5.17 lacks `SubConfigSpec`). Nothing else: the device's other
# packages satisfy transformers 5.24's runtime checks. `--with-av` adds PyAV (34 MiB; 47 MiB in all) for runs
# that should not use the suite's PyAV placeholder.
#
#   bash benchmarks/gpu_suite_wheels.sh [--with-av] [DIR]        (DIR defaults to build/gpu-wheels, git-ignored)
#
# Then, with the device tool (the call carries DIR; the suite's docstring has the whole command):
#   run(carry=["build/gpu-wheels"], command="python3 -m pip install -q --no-index --no-deps --no-compile
#       --target /tmp/site build/gpu-wheels/*.whl && PYTHONPATH=/tmp/site python3 benchmarks/gpu_suite.py ...")
#
# Prints each wheel, their total and the working tree that travels with them; fails when the two together pass
# the 64 MiB a call carries.
set -euo pipefail

TRANSFORMERS_VERSION=${TRANSFORMERS_VERSION:-5.24.0}
AV_VERSION=${AV_VERSION:-18.1.0}
LIMIT=$((64 * 1024 * 1024))
PYTHON=${PYTHON:-python3}

with_av=0
out=build/gpu-wheels
for arg in "$@"; do
    case "$arg" in
        --with-av) with_av=1 ;;
        -h | --help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        -*) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
        *) out=$arg ;;
    esac
done

cd "$(dirname "$0")/.."
rm -rf "$out"
mkdir -p "$out"

# This package, as the working tree has it now (rebuild after every change you want measured), built from a copy
# of the files that travel (tracked + untracked, not ignored): no stale build/lib, no egg-info written here. With
# the environment's setuptools when it can (offline), else in pip's isolated build environment.
wheels_dir=$(cd "$out" && pwd)
source_copy=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$source_copy" "$log"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null \
    | tar -xf - -C "$source_copy"
cd "$source_copy"
if ! "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$wheels_dir" . >"$log" 2>&1; then
    "$PYTHON" -m pip wheel -q --no-deps -w "$wheels_dir" . || { cat "$log" >&2; exit 1; }
fi
cd - >/dev/null

# The device's Python and platform, whatever this machine is (the device is x86-64, CPython 3.12).
device_platform=(--only-binary=:all: --python-version 3.12 --implementation cp
                 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PYTHON" -m pip download -q --no-deps "${device_platform[@]}" -d "$out" "transformers==$TRANSFORMERS_VERSION"
if [ "$with_av" = 1 ]; then
    "$PYTHON" -m pip download -q --no-deps "${device_platform[@]}" -d "$out" "av==$AV_VERSION"
fi

mib() { awk -v bytes="$1" 'BEGIN {printf "%8.2f MiB", bytes / 1048576}'; }
wheels=$(du -cb "$out"/*.whl | tail -n 1 | cut -f 1)
# What travels besides: tracked files and untracked files git does not ignore (carried paths come on top).
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null \
       | awk '$2 == "total" {s += $1} END {print s + 0}')
for wheel in "$out"/*.whl; do
    echo "$(mib "$(stat -c %s "$wheel")")  $wheel"
done
echo "$(mib "$wheels")  wheels in total"
echo "$(mib "$tree")  working tree that travels with them"
if [ $((wheels + tree)) -ge "$LIMIT" ]; then
    echo "too large: wheels + working tree pass the 64 MiB one device call carries" >&2
    exit 1
fi
echo "$(mib $((LIMIT - wheels - tree)))  left of the 64 MiB a call carries"
