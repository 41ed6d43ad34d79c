//! [`Cause`]: why something failed inside, kept as a typed error.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Why a call failed inside: the underlying error itself (a backend's, an
/// I/O error, a task's), so a log can walk its [`Error::source`] chain and
/// a caller can downcast it, or a sentence saying what was found wrong when
/// there is no underlying error. Shared, so the errors that carry it stay
/// cheap to clone. Never shown to a client.
#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync>);

impl Cause {
    /// The cause is `error`.
    pub fn of(error: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// `error`, said to have happened while doing `what` (`"{what}: {error}"`,
    /// with `error` as the source).
    pub fn while_(what: impl Into<String>, error: impl Error + Send + Sync + 'static) -> Self {
        Self::of(Context { what: what.into(), error: Box::new(error) })
    }

    /// `error`, saying its whole source chain in one line ([`chain`]) for
    /// errors whose own words leave out what matters (e.g. which
    /// certificate check failed); the chain stays walkable.
    pub fn with_chain(error: impl Error + Send + Sync + 'static) -> Self {
        Self::of(Chained(Box::new(error)))
    }

    /// The underlying error, if it is an `E`.
    pub fn downcast_ref<E: Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref::<E>()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// Two causes are equal when they say the same thing (errors are not
/// comparable themselves; this is for tests and `assert_eq!`).
impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self::of(Message(message))
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Self::from(message.to_owned())
    }
}

/// A cause with no underlying error: what was found wrong.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Message {}

/// An error and what was being done when it happened.
#[derive(Debug)]
struct Context {
    what: String,
    error: Box<dyn Error + Send + Sync>,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.error)
    }
}

impl Error for Context {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.error.as_ref())
    }
}

/// An error displayed with its whole chain.
#[derive(Debug)]
struct Chained(Box<dyn Error + Send + Sync>);

impl fmt::Display for Chained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0.as_ref()))
    }
}

impl Error for Chained {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// `error` and each of its sources, joined by `": "`, skipping a source
/// whose words its parent already says (for one log line).
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_keeps_its_error_and_its_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let cause = Cause::while_("opening the store", io);
        assert_eq!(cause.to_string(), "opening the store: gone");
        let source = cause.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(source.map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound));
        assert_eq!(chain(&cause), "opening the store: gone");
        let plain = Cause::of(std::io::Error::other("disk full"));
        assert!(plain.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(Cause::from("x"), Cause::from("x".to_owned()));
    }
}
