//! What the write side needs to know about every aggregate beyond `cqrs_es::Aggregate`.

use cqrs_es::Aggregate;

/// An aggregate that belongs to one tenant, and whose changes may take rules that span
/// aggregates: names unique per tenant, and references to other aggregates that must exist
/// (and then cannot be deleted while referred to).
pub trait Governed: Aggregate + Clone {
    /// The tenant owning this instance; `None` until its first event.
    ///
    /// The write side answers "not found" when a command's tenant differs, so that no
    /// command ever reveals that another tenant's aggregate exists.
    fn tenant(&self) -> Option<&str>;

    /// What `events` (about to be applied to `self`) claim and release. The write side
    /// stores it in the same statement as the events, so that two prompts can never commit
    /// the same name, and a prompt can never enter a category that is being deleted.
    fn claims(&self, _events: &[Self::Event]) -> Claims {
        Claims::default()
    }
}

/// What one change claims and releases. Each entry is `(scope, key)`: for a name, the scope
/// of its uniqueness and the name; for a reference, the referred aggregate's type and id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Names taken; another aggregate of the tenant holding one makes the change fail.
    pub claimed: Vec<(&'static str, String)>,
    /// Names given up.
    pub released: Vec<(&'static str, String)>,
    /// Scopes in which this aggregate becomes something others may refer to.
    pub registered: Vec<&'static str>,
    /// Scopes in which it stops being one; the change fails while anything refers to it.
    pub unregistered: Vec<&'static str>,
    /// Aggregates this one starts referring to; the change fails if one is not registered.
    pub referenced: Vec<(&'static str, String)>,
    /// Aggregates this one stops referring to.
    pub unreferenced: Vec<(&'static str, String)>,
}

impl Claims {
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

    /// Makes this aggregate referable in `scope` (normally its own type).
    pub fn register(mut self, scope: &'static str) -> Self {
        self.registered.push(scope);
        self
    }

    /// Makes this aggregate no longer referable in `scope`.
    pub fn unregister(mut self, scope: &'static str) -> Self {
        self.unregistered.push(scope);
        self
    }

    /// Refers to `target` in `scope`.
    pub fn refer(mut self, scope: &'static str, target: &str) -> Self {
        self.referenced.push((scope, target.to_string()));
        self
    }

    /// Stops referring to `target` in `scope`.
    pub fn unrefer(mut self, scope: &'static str, target: &str) -> Self {
        self.unreferenced.push((scope, target.to_string()));
        self
    }

    /// Moves a reference in `scope` from `old` to `new` (either may be none).
    pub fn move_reference(self, scope: &'static str, old: Option<&str>, new: Option<&str>) -> Self {
        if old == new {
            return self;
        }
        let claims = match old {
            Some(old) => self.unrefer(scope, old),
            None => self,
        };
        match new {
            Some(new) => claims.refer(scope, new),
            None => claims,
        }
    }
}
