//! Anchoring the audit chains: the signing key, where anchors go, how often.

use std::time::Duration;

use projections::audit::anchor::{AnchorKey, AnchorSettings, DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX};

/// `aipm` flags for anchoring (see [`projections::audit::anchor`]); every one can also be
/// set in the environment. Global: `serve` anchors periodically, `audit anchor` on demand,
/// and `audit verify` checks the chains against the anchors.
#[derive(Debug, Clone, clap::Args)]
pub struct AnchorArgs {
    /// PKCS#8 PEM file of the Ed25519 key that signs anchors (`openssl genpkey -algorithm
    /// ed25519`). Keep it out of the database's reach; without it (and without
    /// --audit-verify-key) chains are not anchored.
    #[arg(long, env = "AIPM_AUDIT_SIGNING_KEY", global = true)]
    pub audit_signing_key: Option<String>,
    /// PEM file of the public key only (`openssl pkey -pubout`): verify against anchors
    /// without being able to make them.
    #[arg(long, env = "AIPM_AUDIT_VERIFY_KEY", global = true)]
    pub audit_verify_key: Option<String>,
    /// How often a server anchors every chain that moved (e.g. 15m, 1h).
    #[arg(long, env = "AIPM_AUDIT_ANCHOR_INTERVAL", default_value = "1h", global = true,
          value_parser = crate::settings::idempotency::parse_duration)]
    pub audit_anchor_interval: Duration,
    /// JetStream stream holding the anchors (created refusing deletes and purges).
    #[arg(long, env = "AIPM_AUDIT_ANCHOR_STREAM", default_value = DEFAULT_STREAM, global = true)]
    pub audit_anchor_stream: String,
    /// Subject prefix of the anchors: `<prefix>.<tenant>`.
    #[arg(long, env = "AIPM_AUDIT_ANCHOR_SUBJECT_PREFIX", default_value = DEFAULT_SUBJECT_PREFIX, global = true)]
    pub audit_anchor_subject_prefix: String,
}

impl AnchorArgs {
    /// The anchoring configured, `None` when no key is given. A key without NATS, or a key
    /// file that cannot be read, is an error naming the setting.
    pub fn settings(&self, nats_url: &str) -> Result<Option<AnchorSettings>, String> {
        let key =
            match (&self.audit_signing_key, &self.audit_verify_key) {
                (Some(path), _) => AnchorKey::signing_from_pem_file(path)
                    .map_err(|e| format!("AIPM_AUDIT_SIGNING_KEY: {e}"))?,
                (None, Some(path)) => AnchorKey::verifying_from_pem_file(path)
                    .map_err(|e| format!("AIPM_AUDIT_VERIFY_KEY: {e}"))?,
                (None, None) => return Ok(None),
            };
        if nats_url.trim().is_empty() {
            return Err("anchoring the audit chains needs NATS: set NATS_URL, or unset \
                        AIPM_AUDIT_SIGNING_KEY and AIPM_AUDIT_VERIFY_KEY"
                .into());
        }
        Ok(Some(AnchorSettings {
            nats_url: nats_url.trim().to_string(),
            stream: self.audit_anchor_stream.clone(),
            subject_prefix: self.audit_anchor_subject_prefix.clone(),
            key,
            interval: self.audit_anchor_interval,
        }))
    }
}
