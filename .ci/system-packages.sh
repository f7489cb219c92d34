#!/usr/bin/env bash
# Debian packages the tests use (headless Chromium for the report's render check; munge, slurmctld, slurmd
# for the one-node Slurm cluster of tests/test_slurm.py, which needs no accounting database). Idempotent.
set -euo pipefail
pkgs=(chromium munge slurmctld slurmd slurm-client)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "not root: cannot install ${missing[*]}; the tests that need them will be skipped" >&2
  fi
fi
