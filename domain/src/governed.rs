//! What the write side needs to know about every aggregate beyond `cqrs_es::Aggregate`.

use cqrs_es::Aggregate;

/// An aggregate that belongs to one tenant and may hold names that are unique per tenant.
pub trait Governed: Aggregate + Clone {
    /// The tenant owning this instance; `None` until its first event.
    ///
    /// The write side answers "not found" when a command's tenant differs, so that no
    /// command ever reveals that another tenant's aggregate exists.
    fn tenant(&self) -> Option<&str>;

    /// The per-tenant unique names that `events` (about to be applied to `self`) take and
    /// release. They are stored in the same statement as the events, so two prompts can
    /// never commit the same name.
    fn name_claims(&self, _events: &[Self::Event]) -> NameClaims {
        NameClaims::default()
    }
}

/// Names claimed and released by one change, each as `(scope, key)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NameClaims {
    pub claimed: Vec<(&'static str, String)>,
    pub released: Vec<(&'static str, String)>,
}

impl NameClaims {
    /// Claims `key` (compared case-insensitively) in `scope`.
    pub fn claim(mut self, scope: &'static str, key: &str) -> Self {
        self.claimed.push((scope, key.to_lowercase()));
        self
    }

    /// Releases `key` in `scope`.
    pub fn release(mut self, scope: &'static str, key: &str) -> Self {
        self.released.push((scope, key.to_lowercase()));
        self
    }

    /// Moves a claim from `old` to `new`; nothing changes when they differ only in case.
    pub fn rename(self, scope: &'static str, old: &str, new: &str) -> Self {
        if old.to_lowercase() == new.to_lowercase() {
            self
        } else {
            self.release(scope, old).claim(scope, new)
        }
    }
}
