//! Who calls: a principal (the name studies and audit records are attributed to) and its
//! roles, and which names may be principals. Authentication ([`crate::auth`]) finds the
//! principal; the engine checks its roles.

use serde::Deserialize;
use std::collections::BTreeSet;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Upload, classify, explain and compare, and read and delete its own studies.
    Client,
    /// List models, and read and delete any principal's studies.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name studies and audit records are attributed to.
    pub name: String,
    /// Its roles.
    pub roles: BTreeSet<Role>,
}

impl Principal {
    /// The caller when authentication is off: one shared client.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            roles: [Role::Client].into_iter().collect(),
        }
    }

    /// Whether the principal has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Whether `name` may be a principal: 1 to 64 letters, digits and `._@-`.
pub fn valid_principal(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}
