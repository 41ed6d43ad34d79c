//! Fault injection for crash tests, compiled in only with the
//! `fault-injection` feature (which the binary's tests turn on).
//!
//! `BLINDPASS_FAULT=abort-after-commit:spend` makes the process abort right
//! after the named transaction commits and before its caller sees the
//! result: the crash between "durable" and "answered" that a redemption must
//! survive. A build of the binary (release or debug) contains none of this.

fn wanted(point: &str, name: &str) -> bool {
    std::env::var("BLINDPASS_FAULT").is_ok_and(|v| v.split(',').any(|f| f == format!("{point}:{name}")))
}

/// Called just before `name`'s transaction commits.
pub(crate) fn before_commit(name: &str) {
    if wanted("abort-before-commit", name) {
        eprintln!("BLINDPASS_FAULT: aborting before the {name} commit");
        std::process::abort();
    }
}

/// Called just after `name`'s transaction committed.
pub(crate) fn after_commit(name: &str) {
    if wanted("abort-after-commit", name) {
        eprintln!("BLINDPASS_FAULT: aborting after the {name} commit");
        std::process::abort();
    }
}
