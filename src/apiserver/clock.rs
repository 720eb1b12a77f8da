//! Kubernetes timestamps (RFC 3339, whole seconds, UTC), below every file that writes one.

use time::OffsetDateTime;

/// The current time as Kubernetes writes it (`2006-01-02T15:04:05Z`).
pub fn now() -> String {
    timestamp(OffsetDateTime::now_utc())
}

/// A time formatted as a Kubernetes timestamp.
pub fn timestamp(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&f).unwrap_or_default()
}
