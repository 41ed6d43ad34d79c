//! # blindpass-domain
//!
//! The words every layer of blindpass shares, owned by none of them: the
//! environment everything is scoped to, what an API key may do, and the
//! states of an issuer key. The store persists them by [`as_str`] name; the
//! service decides with them; the server and the CLI parse them.
//!
//! [`as_str`]: Environment::as_str

#![forbid(unsafe_code)]

mod cause;

pub use cause::{Cause, chain};

use std::fmt;
use std::str::FromStr;

/// A Persona environment: everything is scoped to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Environment {
    /// Test traffic; claims always pass.
    Sandbox,
    /// Real traffic.
    Production,
}

impl Environment {
    /// Both environments.
    pub const ALL: [Environment; 2] = [Environment::Sandbox, Environment::Production];

    /// `sandbox` or `production`.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Sandbox => "sandbox",
            Environment::Production => "production",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown environment, permission or state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownName(pub String);

impl FromStr for Environment {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sandbox" => Ok(Environment::Sandbox),
            "production" => Ok(Environment::Production),
            other => Err(UnknownName(other.to_owned())),
        }
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// `privacy_pass.write`: issue Privacy Passes.
    PrivacyPassWrite,
    /// `relay.verify`: record claim results for relays.
    RelayVerify,
}

impl Permission {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::PrivacyPassWrite => "privacy_pass.write",
            Permission::RelayVerify => "relay.verify",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "privacy_pass.write" => Ok(Permission::PrivacyPassWrite),
            "relay.verify" => Ok(Permission::RelayVerify),
            other => Err(UnknownName(other.to_owned())),
        }
    }
}

/// Lifecycle state of an issuer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Announced (listed in the directory) but not yet issuing; becomes
    /// active at `not_before`.
    Pending,
    /// Issues and verifies (from `not_before` on).
    Active,
    /// Rotated out: verifies tokens it issued, issues nothing.
    VerifyOnly,
    /// Neither issues nor verifies.
    Retired,
}

impl KeyState {
    /// Storage / display name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::VerifyOnly => "verify-only",
            KeyState::Retired => "retired",
        }
    }
}

impl FromStr for KeyState {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(KeyState::Pending),
            "active" => Ok(KeyState::Active),
            "verify-only" => Ok(KeyState::VerifyOnly),
            "retired" => Ok(KeyState::Retired),
            other => Err(UnknownName(other.to_owned())),
        }
    }
}

/// Longest claim type the domain knows (what the store bounds). The HTTP
/// edge accepts shorter ones (Persona's 128).
pub const MAX_CLAIM_TYPE_LEN: usize = 1024;

/// A claim type (`age_over18_verified`): 1 to [`MAX_CLAIM_TYPE_LEN`] ASCII
/// letters, digits, `_`, `-` or `.`. Only [`ClaimType::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimType(String);

/// A string that is not a claim type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a claim type is 1 to {MAX_CLAIM_TYPE_LEN} letters, digits, '_', '-' or '.'")]
pub struct InvalidClaimType;

impl ClaimType {
    /// Checks `text`'s shape.
    pub fn parse(text: &str) -> Result<Self, InvalidClaimType> {
        let ok = !text.is_empty()
            && text.len() <= MAX_CLAIM_TYPE_LEN
            && text.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
        if ok { Ok(Self(text.to_owned())) } else { Err(InvalidClaimType) }
    }

    /// The claim type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClaimType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_value_and_nothing_else_parses() {
        for env in Environment::ALL {
            assert_eq!(env.as_str().parse::<Environment>(), Ok(env));
        }
        for p in [Permission::PrivacyPassWrite, Permission::RelayVerify] {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
        }
        for s in [KeyState::Pending, KeyState::Active, KeyState::VerifyOnly, KeyState::Retired] {
            assert_eq!(s.as_str().parse::<KeyState>(), Ok(s));
        }
        assert_eq!("Sandbox".parse::<Environment>(), Err(UnknownName("Sandbox".into())));
        assert!("privacy_pass.read".parse::<Permission>().is_err());
        assert!("verify_only".parse::<KeyState>().is_err());
    }

    #[test]
    fn a_claim_type_is_a_short_identifier() {
        assert_eq!(
            ClaimType::parse("age_over18_verified.v-2").map(|c| c.to_string()).as_deref(),
            Ok("age_over18_verified.v-2")
        );
        for bad in ["", "a b", "über", "a/b", &"x".repeat(MAX_CLAIM_TYPE_LEN + 1)] {
            assert_eq!(ClaimType::parse(bad), Err(InvalidClaimType), "{bad:?}");
        }
        assert!(ClaimType::parse(&"x".repeat(MAX_CLAIM_TYPE_LEN)).is_ok());
    }
}
