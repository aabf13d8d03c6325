#!/bin/sh
# On heim-nas: a restore drill whose report is kept (docs/DEPLOYMENT.md §6). §5 uses the
# kept reports to prefer a snapshot that passed a drill.
#
#   drill.sh SNAPSHOT_ID          drill that snapshot
#   drill.sh --older-than 30d     the newest snapshot at least 30 days old (as the timer)
#
# Runs `backup-receiver drill --config CONFIG --json ARGS`, keeps the JSON report (the
# envelope of docs/json/schema.json) as
# DRILL_REPORTS/<UTC time>-<snapshot>.json, prints a summary and exits with the drill's
# status (0 only when every table count, sanity query and object matched).
#
# Environment (defaults for heim-nas):
#   CONFIG           /etc/familienarchiv-backup/receiver.toml ([drill] section, repo)
#   BACKUP_RECEIVER  backup-receiver
#   DRILL_REPORTS    /srv/backup/drill-reports
# Needs: jq.
set -eu

[ $# -ge 1 ] || { echo "usage: $0 SNAPSHOT_ID | --older-than AGE" >&2; exit 2; }
CONFIG=${CONFIG:-/etc/familienarchiv-backup/receiver.toml}
BACKUP_RECEIVER=${BACKUP_RECEIVER:-backup-receiver}
DRILL_REPORTS=${DRILL_REPORTS:-/srv/backup/drill-reports}

umask 077
mkdir -p "$DRILL_REPORTS"
tmp=$(mktemp "$DRILL_REPORTS/.drill.XXXXXX")
trap 'rm -f "$tmp"' EXIT
status=0
"$BACKUP_RECEIVER" drill --config "$CONFIG" --json "$@" >"$tmp" || status=$?
snapshot=$(jq -r '.snapshot_id | strings' "$tmp" 2>/dev/null || true)
case $snapshot in
'' | *[!A-Za-z0-9_.-]*)
    echo "$0: the drill did not run (exit status $status); its error is above" >&2
    exit $((status == 0 ? 1 : status))
    ;;
esac
report="$DRILL_REPORTS/$(date -u +%Y%m%dT%H%M%SZ)-$snapshot.json"
mv "$tmp" "$report"
jq -r '
    "snapshot \(.snapshot_id) (\(.time), \(.age) old): "
        + (if .passed then "PASSED" else "FAILED" end) + " in \(.seconds) s",
    (.tables[] | "  table \(.table): \(.actual // "not restored") rows, recorded \(.expected // "none")"),
    "  objects: \(.objects.restored) of \(.objects.expected) restored, \(.objects.bytes) bytes, \(.objects.failed) failed",
    (.steps[] | "  step \(.name): \(.seconds) s" + (if .ok then "" else " FAILED: \(.error)" end)),
    (.failures[] | "  FAILURE: \(.)")
' "$report"
echo "report: $report"
exit "$status"
