//! Command metadata: stored as a JSON object of strings on every event a command produces,
//! and the scope of the idempotency key it may carry.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Who may replay an idempotency key: the tenant and the API key (`owner`) that sent it,
/// and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyScope {
    pub tenant: String,
    pub owner: String,
    pub key: String,
}

/// Who issued a command, on whose behalf, from where and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMetadata {
    pub tenant: String,
    pub actor_key_id: String,
    pub actor_name: String,
    pub request_id: String,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub reason: Option<String>,
    /// When the command was received (RFC 3339); `events.recorded_at` is the commit-side time.
    pub timestamp: String,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    /// The client's `Idempotency-Key`: with it, the append also records the command's
    /// outcome under that key (see [`crate::idempotency`]).
    pub idempotency_key: Option<String>,
}

impl CommandMetadata {
    /// The scope of the command's idempotency key, if it has one: its tenant and the API
    /// key (actor) that sent it.
    pub fn idempotency_scope(&self) -> Option<IdempotencyScope> {
        self.idempotency_key.as_ref().map(|key| IdempotencyScope {
            tenant: self.tenant.clone(),
            owner: self.actor_key_id.clone(),
            key: key.clone(),
        })
    }

    /// The string map cqrs-es envelopes carry; absent optional values are left out.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::new();
        let mut put = |key: &str, value: &Option<String>| {
            if let Some(value) = value {
                map.insert(key.to_string(), value.clone());
            }
        };
        put("tenant", &Some(self.tenant.clone()));
        put("actor_key_id", &Some(self.actor_key_id.clone()));
        put("actor_name", &Some(self.actor_name.clone()));
        put("request_id", &Some(self.request_id.clone()));
        put("client_addr", &self.client_addr);
        put("user_agent", &self.user_agent);
        put("reason", &self.reason);
        put("timestamp", &Some(self.timestamp.clone()));
        put("correlation_id", &self.correlation_id);
        put("causation_id", &self.causation_id);
        put("idempotency_key", &self.idempotency_key);
        map
    }
}
