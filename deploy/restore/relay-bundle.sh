#!/bin/sh
# On the operator's workstation: copy a restore bundle from heim-nas to production over two
# SSH connections that both start here (docs/DEPLOYMENT.md §5, docs/adr/0005-...). The NAS
# never connects to production and production never connects to the NAS; the bytes pass
# through this machine without being stored on it.
#
#   relay-bundle.sh NAS_BUNDLE_DIR PROD_BUNDLE_DIR
#
# NAS_BUNDLE_DIR was written by export-bundle.sh; PROD_BUNDLE_DIR must not exist yet.
# At the end every file is checked against the bundle's SHA256SUMS on production.
#
# Environment:
#   NAS   ssh destination of the NAS          heim-nas        (tailnet name, your login)
#   PROD  ssh destination of production      root@prod-vps   (tailnet name)
#   SSH   the ssh program (and options)      ssh
set -eu

[ $# -eq 2 ] || { echo "usage: $0 NAS_BUNDLE_DIR PROD_BUNDLE_DIR" >&2; exit 2; }
NAS=${NAS:-heim-nas}
PROD=${PROD:-root@prod-vps}
SSH=${SSH:-ssh}

# Quote a word for the remote shell, which ssh hands the command line to.
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
from=$(q "$1")
to=$(q "$2")
parent=$(q "$(dirname "$2")")

echo "checking the bundle on $NAS"
$SSH "$NAS" "cd $from && sha256sum --quiet -c SHA256SUMS && cat SNAPSHOT"
echo "copying $NAS:$1 to $PROD:$2"
$SSH "$PROD" "test ! -e $to || { echo $to already exists on production >&2; exit 1; }"
$SSH "$NAS" "tar -C $from -cf - ." |
    $SSH "$PROD" "umask 077 && mkdir -p $parent && mkdir $to && tar -C $to -xf -"
echo "checking the copy on $PROD"
$SSH "$PROD" "cd $to && sha256sum --quiet -c SHA256SUMS"
echo "bundle copied and checked: $PROD:$2"
