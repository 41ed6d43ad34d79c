//! How long things live, shared by the use cases that make them and the
//! ones that check them (challenges, relays, redemption).

/// Lifetime of a relay session access token.
pub(crate) const SESSION_SECS: i64 = 30 * 60;
/// RFC challenges rotate their redemption context every hour; the current
/// and the previous hour's challenges are accepted, so a token answering
/// window `w` is accepted until `(w + 2) * CONTEXT_WINDOW_SECS`.
pub(crate) const CONTEXT_WINDOW_SECS: i64 = 3600;
/// Persona challenges are valid for at least this long, and expire on the
/// next full hour after it (so at most two hours).
pub(crate) const CHALLENGE_VALIDITY_SECS: u64 = 3600;
