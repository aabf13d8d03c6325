#!/bin/sh
# On heim-nas: which snapshot to restore (docs/DEPLOYMENT.md §5.1). Read-only.
#
#   choose-snapshot.sh BEFORE       BEFORE: 2026-02-05 or 2026-02-05T14:00:00Z (UTC)
#
# BEFORE is the earliest moment the data may have been damaged, or, after a compromise of
# the VPS, the earliest moment the attacker may have been in and at the latest the first
# suspect snapshot or refused commit of the incident (listed first, from the audit log).
# Prints:
#   1. the audit log's suspect snapshots, refused commits and acknowledgements;
#   2. the good snapshots taken before BEFORE, newest first, with the drills they passed
#      (reports kept by drill.sh, and the passes the receiver records itself); good is the
#      receiver's own verdict (`snapshots --json`: a row's status "good" or "acknowledged": not
#      flagged, or flagged and acknowledged, and not rejected);
#   3. "newest good:" and "newest drilled:" - the candidates. Prefer the drilled one after
#      a compromise; otherwise take the newest good one (and drill it, §5.1).
#
# Environment (defaults for heim-nas):
#   REPO             /srv/backup/familienarchiv   (its audit log, ${REPO}.audit/audit.log, is read as well)
#   BACKUP_RECEIVER  backup-receiver
#   DRILL_REPORTS    /srv/backup/drill-reports
# Needs: jq.
set -eu

[ $# -eq 1 ] || { echo "usage: $0 BEFORE (2026-02-05 or 2026-02-05T14:00:00Z, UTC)" >&2; exit 2; }
REPO=${REPO:-/srv/backup/familienarchiv}
BACKUP_RECEIVER=${BACKUP_RECEIVER:-backup-receiver}
DRILL_REPORTS=${DRILL_REPORTS:-/srv/backup/drill-reports}
before=$1
case $before in
[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]) before=${before}T00:00:00Z ;;
[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z) ;;
*)
    echo "$0: BEFORE must look like 2026-02-05 or 2026-02-05T14:00:00Z (UTC), not '$before'" >&2
    exit 2
    ;;
esac
audit=${REPO%/}.audit/audit.log

echo "== Audit log ($audit): suspect snapshots, refused commits, acknowledgements"
if [ -f "$audit" ]; then
    # Lines that are not JSON are skipped, not fatal.
    jq -R -r 'fromjson? | select(.event == "suspect" or .event == "ack" or .event == "reject"
            or (.event == "rejected" and .call == "Commit"))
        | if .event == "suspect" then
            "\(.time)  suspect   \(.snapshot): \(.reason) (previous good: \(.previous_good // "none"))"
          elif .event == "ack" then
            "\(.time)  ack       \(.snapshot) by \(.operator): \(.note // "")"
          elif .event == "reject" then
            "\(.time)  reject    \(.snapshot) by \(.operator): \(.note // "")"
          else
            "\(.time)  refused   commit from \(.identity) at \(.peer // "?"): \(.code) \(.message)"
          end' "$audit"
else
    echo "(no audit log)"
fi

drills='[]'
set -- "$DRILL_REPORTS"/*.json
if [ -e "$1" ]; then
    # Reports name the snapshot `snapshot_id` (`snapshot` before the JSON convention).
    drills=$(jq -n -c '[inputs | select(.passed == true)
        | {snapshot: (.snapshot_id // .snapshot),
           drilled: (input_filename | split("/") | last | split("-") | first)}]' "$@")
fi

echo
echo "== Good snapshots taken before $before, newest first"
"$BACKUP_RECEIVER" snapshots --repo "$REPO" --json | jq -r \
    --arg before "$before" --argjson drills "$drills" '
    .snapshots
    | map(select(.time < $before)
        | . as $s
        | select(.status == "good" or .status == "acknowledged")
        | .passed = ([$drills[] | select(.snapshot == $s.snapshot_id) | .drilled]
                     + (if .drilled then ["(recorded by the receiver)"] else [] end)
                     | unique))
    | sort_by(.time) | reverse
    | (.[] | "\(.snapshot_id)  \(.time)  "
            + (if .status == "acknowledged" then "(acknowledged suspect) " else "" end)
            + (if .passed == [] then "no drill passed"
               else "drill passed " + (.passed | join(", ")) end)),
      "",
      "newest good:     " + (first(.[] | "\(.snapshot_id) (\(.time))") // "none"),
      "newest drilled:  " + (first(.[] | select(.passed != []) | "\(.snapshot_id) (\(.time))")
                             // "none: drill the newest good one first (drill.sh ID)")'
