//! The snapshot a command names, by its positional name or `--as-of`, resolved by
//! operator::select on the receiver's clock and in the retention time zone.

use chrono_tz::Tz;

use super::exit::CliError;
use crate::clock;
use crate::operator::select::{self, Chosen, Context, Counting};
use crate::store::repository::Repository;

/// The selection context of a command run now.
pub fn context(tz: Tz, counting: Counting) -> Context {
    Context {
        tz,
        now: clock::from_env()(),
        counting,
    }
}

/// The snapshot `name` or `as_of` means (exactly one of them is given; clap or the
/// command made sure, but a wrong pair is a usage error here too).
pub fn pick(
    repo: &Repository,
    cx: &Context,
    name: Option<&str>,
    as_of: Option<&str>,
) -> anyhow::Result<Chosen> {
    Ok(match (name, as_of) {
        (Some(name), None) => select::resolve(repo, name, cx)?,
        (None, Some(t)) => select::as_of(repo, select::parse_time(t, cx.tz, cx.now)?, cx)?,
        (None, None) => {
            return Err(CliError::Usage("name a snapshot, or give --as-of TIME".into()).into())
        }
        (Some(name), Some(_)) => {
            return Err(CliError::Usage(format!(
                "give either a snapshot ({name}) or --as-of, not both"
            ))
            .into())
        }
    })
}
