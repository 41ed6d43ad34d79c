//! Who is calling, once authenticated: an API key (by its bearer secret) or
//! an attester (by its client certificate). Rate limits, permissions and
//! idempotency scopes read this, never a key record: an attester has none.

use crate::{Authenticated, Environment, Permission};

/// The identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalId {
    /// An API key, by its id (`api_…`).
    ApiKey(String),
    /// An mTLS attester, by the DNS name its certificate is valid for.
    Attester(String),
}

/// An authenticated caller: who, in which environment, allowed to do what,
/// with which own rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who.
    pub id: PrincipalId,
    /// The environment its requests belong to.
    pub environment: Environment,
    /// What it may do.
    pub permissions: Vec<Permission>,
    /// Its own requests per minute, beside its environment's (API keys with
    /// one, Persona 2026-09-29).
    pub rate_limit_per_minute: Option<u64>,
}

impl Principal {
    /// An attester named `name`.
    pub fn attester(name: &str, environment: Environment, permissions: Vec<Permission>) -> Self {
        Self { id: PrincipalId::Attester(name.to_owned()), environment, permissions, rate_limit_per_minute: None }
    }

    /// True when it holds `permission`.
    pub fn can(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Where its `Idempotency-Key` records live. (An attester's scope keeps
    /// the spelling records were stored under before principals existed.)
    pub fn idempotency_scope(&self) -> String {
        match &self.id {
            PrincipalId::ApiKey(id) => format!("api_key:{id}"),
            PrincipalId::Attester(name) => format!("api_key:attester:{name}"),
        }
    }

    /// The name of its own rate-limit bucket, when it has an own limit.
    pub(crate) fn own_bucket(&self) -> Option<(&str, u64)> {
        let limit = self.rate_limit_per_minute?;
        match &self.id {
            PrincipalId::ApiKey(id) => Some((id.as_str(), limit)),
            PrincipalId::Attester(_) => None,
        }
    }
}

impl From<Authenticated> for Principal {
    fn from(auth: Authenticated) -> Self {
        let key = auth.key;
        Self {
            id: PrincipalId::ApiKey(key.id),
            environment: key.environment,
            permissions: key.permissions,
            rate_limit_per_minute: key.rate_limit_per_minute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attester_has_its_own_scope_and_no_own_limit() {
        let a = Principal::attester("attester.example", Environment::Sandbox, vec![Permission::PrivacyPassWrite]);
        assert_eq!(a.idempotency_scope(), "api_key:attester:attester.example");
        assert!(a.can(Permission::PrivacyPassWrite) && !a.can(Permission::RelayVerify));
        assert_eq!(a.own_bucket(), None);
        let k = Principal { rate_limit_per_minute: Some(5), id: PrincipalId::ApiKey("api_1".into()), ..a };
        assert_eq!(k.idempotency_scope(), "api_key:api_1");
        assert_eq!(k.own_bucket(), Some(("api_1", 5)));
    }
}
