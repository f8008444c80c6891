#!/usr/bin/env bash
# debian_packages.sh PACKAGE... : installs the Debian packages that are not installed yet
# (apt-get, through sudo when not root); a no-op, in milliseconds, when all are. Used by
# scripts/setup.sh and scripts/fuzz.sh.
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
((${#missing[@]})) || exit 0
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
printf '[setup] installing Debian packages: %s\n' "${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
