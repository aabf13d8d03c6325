#!/bin/sh
# On heim-nas: restore one snapshot into a restore bundle, for the operator's workstation
# to fetch (docs/DEPLOYMENT.md §5, docs/adr/0005-restore-through-the-operators-workstation.md).
#
#   export-bundle.sh SNAPSHOT_ID BUNDLE_DIR [GLOB...]
#
# SNAPSHOT_ID is an id from `backup-receiver snapshots` (choose it with choose-snapshot.sh;
# `latest` is refused on purpose). BUNDLE_DIR must not exist. It receives:
#   archiv.dump   the snapshot's pg_dump file, every byte checked against the manifest
#   objects/      every object of the bucket at its key, every byte checked; with GLOBs
#                 only the objects whose key matches one (`backup-receiver restore
#                 --include`: `*` stays within a path component, `**` crosses `/`)
#   SNAPSHOT      the snapshot id
#   SHA256SUMS    sha256 of every file above, checked again after each copy
#
# Environment (defaults for heim-nas):
#   REPO             the repository                  /srv/backup/familienarchiv
#   BACKUP_RECEIVER  the receiver program            backup-receiver
#   BUNDLE_OWNER     run as root: chown the bundle to this user (default $SUDO_USER), so
#                    the operator's own login can fetch it
# Needs nothing from production and opens no connection.
set -eu

usage() { echo "usage: $0 SNAPSHOT_ID BUNDLE_DIR [GLOB...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
snapshot=$1
bundle=$2
shift 2
# The globs become `--include GLOB` arguments.
n=$#
while [ "$n" -gt 0 ]; do
    set -- "$@" --include "$1"
    shift
    n=$((n - 1))
done
REPO=${REPO:-/srv/backup/familienarchiv}
BACKUP_RECEIVER=${BACKUP_RECEIVER:-backup-receiver}

case $snapshot in
latest | '' | -*)
    echo "$0: give the snapshot's id from \`$BACKUP_RECEIVER snapshots --repo $REPO\`, not '$snapshot'" >&2
    exit 2
    ;;
esac
if [ -e "$bundle" ]; then
    echo "$0: $bundle already exists; remove it or choose another directory" >&2
    exit 1
fi

umask 077
mkdir -p "$(dirname "$bundle")"
mkdir "$bundle"
# The receiver checks every byte against the snapshot's manifest while writing.
"$BACKUP_RECEIVER" restore "$snapshot" --repo "$REPO" \
    --dump-out "$bundle/archiv.dump" --objects-out "$bundle/objects" "$@"
printf '%s\n' "$snapshot" >"$bundle/SNAPSHOT"
(
    cd "$bundle"
    find . -type f ! -path ./SHA256SUMS -print0 | sort -z | xargs -0 -r sha256sum >SHA256SUMS
)
owner=${BUNDLE_OWNER:-${SUDO_USER:-}}
if [ -n "$owner" ] && [ "$(id -u)" -eq 0 ]; then
    chown -R "$owner" "$bundle"
fi
echo "bundle of snapshot $snapshot ready: $bundle ($(du -sh "$bundle" | cut -f1))"
