#!/bin/sh
# On production (the VPS, intact or rebuilt): load a restore bundle into PostgreSQL and the
# MinIO bucket (docs/DEPLOYMENT.md §5). Run it from the production compose directory.
#
#   import-bundle.sh BUNDLE_DIR
#
# First every file is checked against the bundle's SHA256SUMS; nothing is changed if one
# differs. Then:
#   database  pg_restore --clean --if-exists --no-owner --exit-on-error: each object of the
#             dump is dropped and recreated, so the database ends up as in the snapshot
#   objects   every object is uploaded at its key (a bucket that does not exist is created);
#             objects created after the snapshot are left alone
#
# Environment (defaults for the production VPS; values are split at spaces):
#   ONLY                database | objects: do only that part          (both)
#   PG_RESTORE          pg_restore command prefix                       docker compose exec -T db pg_restore
#   PG_RESTORE_TARGET   connection arguments                            -U archiv -d archiv
#   S3_ENDPOINT         MinIO, as reached from here                     http://127.0.0.1:9000
#   S3_BUCKET                                                           familienarchiv
#   S3_REGION                                                           us-east-1
#   S3_ACCESS_KEY_FILE  a MinIO user that may write the bucket          /etc/familienarchiv-backup/minio-restore-access-key
#   S3_SECRET_KEY_FILE                                                  /etc/familienarchiv-backup/minio-restore-secret-key
# Needs: sha256sum, curl (7.75 or newer, for --aws-sigv4), awk.
set -eu

[ $# -eq 1 ] || { echo "usage: $0 BUNDLE_DIR" >&2; exit 2; }
bundle=$1
ONLY=${ONLY:-}
PG_RESTORE=${PG_RESTORE:-docker compose exec -T db pg_restore}
PG_RESTORE_TARGET=${PG_RESTORE_TARGET:--U archiv -d archiv}
S3_ENDPOINT=${S3_ENDPOINT:-http://127.0.0.1:9000}
S3_BUCKET=${S3_BUCKET:-familienarchiv}
S3_REGION=${S3_REGION:-us-east-1}
S3_ACCESS_KEY_FILE=${S3_ACCESS_KEY_FILE:-/etc/familienarchiv-backup/minio-restore-access-key}
S3_SECRET_KEY_FILE=${S3_SECRET_KEY_FILE:-/etc/familienarchiv-backup/minio-restore-secret-key}

case $ONLY in '' | database | objects) ;; *)
    echo "$0: ONLY must be database or objects, not '$ONLY'" >&2
    exit 2
    ;;
esac
for f in SNAPSHOT SHA256SUMS archiv.dump; do
    [ -f "$bundle/$f" ] || { echo "$0: $bundle/$f is missing: not a restore bundle" >&2; exit 1; }
done
echo "checking the bundle of snapshot $(cat "$bundle/SNAPSHOT")"
(cd "$bundle" && sha256sum --quiet --strict -c SHA256SUMS)

if [ "$ONLY" != objects ]; then
    echo "restoring the database: $PG_RESTORE ... $PG_RESTORE_TARGET"
    # shellcheck disable=SC2086 # both are word lists on purpose
    $PG_RESTORE --clean --if-exists --no-owner --exit-on-error $PG_RESTORE_TARGET \
        <"$bundle/archiv.dump"
    echo "database restored"
fi

[ "$ONLY" = database ] && exit 0

# --- objects: one curl, one connection, a signed PUT per object -----------------------
if [ ! -d "$bundle/objects" ]; then
    echo "the snapshot has no objects"
    exit 0
fi
newline='
'
if [ -n "$(cd "$bundle/objects" && find . -type f -name "*$newline*")" ]; then
    echo "$0: an object key contains a newline; upload that object by hand (mc cp)" >&2
    exit 1
fi
big=$(cd "$bundle/objects" && find . -type f -size +5368709120c | head -n 1)
if [ -n "$big" ]; then
    echo "$0: ${big#./} is larger than 5 GiB, the limit of one PUT; upload it by hand (mc cp)" >&2
    exit 1
fi
secret() { tr -d ' \t\r\n' <"$1"; }
access=$(secret "$S3_ACCESS_KEY_FILE")
secret_key=$(secret "$S3_SECRET_KEY_FILE")
# A double-quoted value in a curl config file.
cfg() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
# The credentials go to curl in its config on stdin, never on a command line.
auth() {
    echo "aws-sigv4 = $(cfg "aws:amz:$S3_REGION:s3")"
    echo "user = $(cfg "$access:$secret_key")"
    echo 'header = "x-amz-content-sha256: UNSIGNED-PAYLOAD"'
    echo 'silent'
    echo 'show-error'
}
base=${S3_ENDPOINT%/}/$S3_BUCKET

status=$(auth | curl -K - --head -o /dev/null -w '%{http_code}' "$base" || true)
case $status in
200) ;;
404)
    echo "creating bucket $S3_BUCKET"
    auth | curl -K - --fail-with-body -X PUT -o /dev/null "$base"
    ;;
*)
    echo "$0: $base answers HTTP $status (wrong endpoint, bucket or keys?)" >&2
    exit 1
    ;;
esac

list=$(mktemp)
trap 'rm -f "$list"' EXIT
(cd "$bundle/objects" && find . -type f) | sed 's|^\./||' | sort >"$list"
count=$(wc -l <"$list")
bytes=$(cd "$bundle/objects" && find . -type f -printf '%s\n' | awk '{ n += $1 } END { printf "%d", n }')
if [ "$count" -eq 0 ]; then
    echo "the snapshot has no objects"
    exit 0
fi
echo "uploading $count objects ($bytes bytes) to $base"
{
    auth
    echo 'fail-early'
    echo 'fail-with-body'
    echo 'path-as-is'
    # Each key as a URL path: every byte but A-Z a-z 0-9 - . _ ~ / percent-encoded, as
    # S3's signature (SigV4 canonical URI) encodes it.
    LC_ALL=C awk -v base="$base" -v dir="$bundle/objects" '
        BEGIN { for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i }
        function cfg(s,    out, i, c) {
            out = ""
            for (i = 1; i <= length(s); i++) {
                c = substr(s, i, 1)
                if (c == "\\" || c == "\"") out = out "\\"
                out = out c
            }
            return "\"" out "\""
        }
        {
            url = ""
            for (i = 1; i <= length($0); i++) {
                c = substr($0, i, 1)
                if (c ~ /[A-Za-z0-9._~\/-]/) url = url c
                else url = url sprintf("%%%02X", ord[c])
            }
            print "upload-file = " cfg(dir "/" $0)
            print "url = " cfg(base "/" url)
        }' "$list"
} | curl -K -
echo "objects restored: $count objects, $bytes bytes"
