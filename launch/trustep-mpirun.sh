#!/usr/bin/env bash
# Former name of launch/local.sh, kept so existing commands and docs keep working:
#   launch/trustep-mpirun.sh -n N [--hostfile FILE] [--print] [--] <trustep arguments>
# See launch/local.sh for what it adds to mpirun.
exec "$(dirname "${BASH_SOURCE[0]}")/local.sh" "$@"
