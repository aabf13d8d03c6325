//! The one JSON convention of every command that reports (`--json` on the receiver's
//! commands and on `backup-sender run`): an envelope with the same first fields
//! everywhere, the command's own fields beside them, and one error object when the
//! command did not succeed. The schema is docs/json/schema.json (a test validates every
//! command's output against it).
//!
//! ```json
//! {"command": "ls", "ok": true, "snapshot_id": "20260105T013000Z", "objects": [...]}
//! {"command": "restore", "ok": false, "snapshot_id": null,
//!  "error": {"kind": "usage", "exit_code": 2, "message": "..."}}
//! ```
//!
//! Field names follow one rule: a snapshot id is `snapshot_id` (or `<role>_snapshot_id`,
//! `snapshot_ids` for a list), a time is RFC 3339 in UTC, sizes are bytes. The body of a
//! report must not hold the envelope's own fields (a test checks every command).

use serde::Serialize;

/// Why a command did not succeed: the exit code's name in its program's table, the code,
/// and the message the command printed on stderr.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub kind: String,
    pub exit_code: u8,
    pub message: String,
}

/// A command's report: `command`, `ok`, `snapshot_id` (the snapshot the command worked
/// on, `null` for one over the whole repository or when none was chosen), `error` when
/// `ok` is false, and the command's own fields.
#[derive(Debug, Serialize)]
pub struct Envelope<'a, T: Serialize> {
    pub command: &'a str,
    pub ok: bool,
    pub snapshot_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(flatten)]
    pub body: T,
}

/// The body of a command that failed before it had anything to report.
#[derive(Debug, Serialize)]
pub struct NoBody {}

/// The envelope of a command that failed before it had anything to report.
pub fn failure<'a>(command: &'a str, error: ErrorBody) -> Envelope<'a, NoBody> {
    Envelope {
        command,
        ok: false,
        snapshot_id: None,
        error: Some(error),
        body: NoBody {},
    }
}

/// `value` as pretty JSON with a trailing newline.
pub fn to_text<T: Serialize>(value: &Envelope<'_, T>) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("a report serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Body {
        objects: u64,
    }

    #[test]
    fn the_envelope_comes_first_and_the_body_beside_it() {
        let ok = Envelope {
            command: "ls",
            ok: true,
            snapshot_id: Some("s1"),
            error: None,
            body: Body { objects: 3 },
        };
        let v: serde_json::Value = serde_json::from_str(&to_text(&ok)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"command": "ls", "ok": true, "snapshot_id": "s1", "objects": 3})
        );
        let err = failure(
            "restore",
            ErrorBody {
                kind: "usage".into(),
                exit_code: 2,
                message: "no snapshot named \"x\"".into(),
            },
        );
        let v: serde_json::Value = serde_json::from_str(&to_text(&err)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"command": "restore", "ok": false, "snapshot_id": null,
                "error": {"kind": "usage", "exit_code": 2, "message": "no snapshot named \"x\""}})
        );
    }
}
