//! Anchors: each tenant's chain head, signed and kept outside the database.
//!
//! Verification recomputes the chain from the event log, so whoever can rewrite the log (and
//! then rebuild the audit table from it) gets a chain that verifies. An anchor pins the chain
//! as it was: the head's place (`entries`), hash and cursor at an instant, signed with an
//! Ed25519 key that is not in the database, published to a JetStream stream that refuses
//! message deletes and purges. Verification then checks the recomputed chain against every
//! anchor: history rewritten before the last anchor changes a hash an anchor holds.
//!
//! An anchor is a JSON object; its `signature` is the hex Ed25519 signature of the RFC 8785
//! canonical JSON of the other fields, by the key whose public half is `key` (hex). One
//! subject per tenant: `<subject prefix>.<tenant>`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::push;
use async_nats::jetstream::stream::{Config, StorageType, Stream};
use async_nats::jetstream::{self, Context};
use chrono::Utc;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::canonical;
use crate::leader::Leadership;

/// Stream name used when none is configured.
pub const DEFAULT_STREAM: &str = "AIPM_AUDIT_ANCHORS";
/// Subject prefix used when none is configured.
pub const DEFAULT_SUBJECT_PREFIX: &str = "aipm.anchors";
/// How long reading a tenant's anchors may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The key anchors are checked with: the signing key (which also signs), or only its
/// public half (for a verifier that must not be able to sign).
#[derive(Clone)]
pub enum AnchorKey {
    Signing(SigningKey),
    Verifying(VerifyingKey),
}

impl AnchorKey {
    /// The private key in a PKCS#8 PEM file, as `openssl genpkey -algorithm ed25519` writes.
    pub fn signing_from_pem_file(path: &str) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        SigningKey::from_pkcs8_pem(&pem)
            .map(Self::Signing)
            .map_err(|e| format!("{path} is not a PKCS#8 PEM Ed25519 private key: {e}"))
    }

    /// The public key in a PEM file, as `openssl pkey -pubout` writes.
    pub fn verifying_from_pem_file(path: &str) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        VerifyingKey::from_public_key_pem(&pem)
            .map(Self::Verifying)
            .map_err(|e| format!("{path} is not a PEM Ed25519 public key: {e}"))
    }

    fn verifying(&self) -> VerifyingKey {
        match self {
            Self::Signing(key) => key.verifying_key(),
            Self::Verifying(key) => *key,
        }
    }

    /// The public key as anchors name it.
    pub fn public_hex(&self) -> String {
        hex::encode(self.verifying().to_bytes())
    }
}

impl std::fmt::Debug for AnchorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        write!(f, "AnchorKey({})", self.public_hex())
    }
}

/// Where anchors go and the key that signs or checks them.
#[derive(Debug, Clone)]
pub struct AnchorSettings {
    pub nats_url: String,
    pub stream: String,
    pub subject_prefix: String,
    pub key: AnchorKey,
    /// How often a server anchors the chains that moved.
    pub interval: Duration,
}

impl AnchorSettings {
    fn subject(&self, tenant: &str) -> String {
        format!(
            "{}.{}",
            self.subject_prefix,
            crate::cloudevent::subject_token(tenant)
        )
    }
}

/// A tenant's chain head at an instant, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Anchor {
    pub tenant: String,
    /// Entries in the chain: the head's `sequence`.
    pub entries: i64,
    /// The head entry's hash.
    pub head_hash: String,
    /// The head entry's place in the global order.
    pub cursor: String,
    /// When the head was anchored (RFC 3339).
    pub anchored_at: String,
    /// The signer's public key, hex.
    pub key: String,
    /// Ed25519 signature of the canonical JSON of the fields above, hex.
    pub signature: String,
}

impl Anchor {
    fn signed_text(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.remove("signature");
        }
        canonical::to_string(&value)
    }

    /// Whether `key` signed this anchor.
    pub fn signed_by(&self, key: &AnchorKey) -> bool {
        let Ok(bytes) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.key == key.public_hex()
            && key
                .verifying()
                .verify(self.signed_text().as_bytes(), &signature)
                .is_ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("the anchors' NATS stream: {0}")]
    Nats(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("anchoring needs the private key (AIPM_AUDIT_SIGNING_KEY), not only the public one")]
    CannotSign,
}

fn nats(context: &'static str) -> impl FnOnce(async_nats::Error) -> AnchorError {
    move |error| AnchorError::Nats(format!("{context}: {error}"))
}

async fn context(settings: &AnchorSettings) -> Result<Context, AnchorError> {
    let client = async_nats::ConnectOptions::new()
        .name("aipm anchors")
        .connection_timeout(Duration::from_secs(5))
        .connect(settings.nats_url.as_str())
        .await
        .map_err(|e| nats("connecting")(e.into()))?;
    Ok(jetstream::new(client))
}

/// The anchors' stream: created if missing, refusing the deletion and purge of messages.
async fn stream(context: &Context, settings: &AnchorSettings) -> Result<Stream, AnchorError> {
    let stream = context
        .get_or_create_stream(Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{}.>", settings.subject_prefix)],
            storage: StorageType::File,
            deny_delete: true,
            deny_purge: true,
            ..Config::default()
        })
        .await
        .map_err(|e| nats("creating the stream")(e.into()))?;
    let config = &stream.cached_info().config;
    if !config.deny_delete || !config.deny_purge {
        return Err(AnchorError::Nats(format!(
            "stream {} allows deleting or purging messages; anchors need a stream that refuses both",
            settings.stream
        )));
    }
    Ok(stream)
}

/// What [`anchor`] did for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchored {
    /// A new anchor was published.
    Published(Anchor),
    /// The last anchor already holds the current head.
    Unchanged(Anchor),
}

/// Anchors the chain head of `tenant` (or of every tenant) as the audit table holds it now,
/// unless the last anchor already holds it.
pub async fn anchor(
    pool: &PgPool,
    settings: &AnchorSettings,
    tenant: Option<&str>,
) -> Result<Vec<Anchored>, AnchorError> {
    let AnchorKey::Signing(signing) = &settings.key else {
        return Err(AnchorError::CannotSign);
    };
    let context = context(settings).await?;
    let stream = stream(&context, settings).await?;
    let tenants: Vec<String> = match tenant {
        Some(tenant) => vec![tenant.to_string()],
        None => {
            sqlx::query_scalar("select tenant_id from tenant order by tenant_id")
                .fetch_all(pool)
                .await?
        }
    };
    let mut done = Vec::new();
    for tenant in tenants {
        let head: Option<(i64, String, String)> = sqlx::query_as(
            "select chain_seq, hash, coalesce(origin_cursor, transaction_id || '-' || position) from audit_entry
             where tenant_id = $1 order by chain_seq desc limit 1",
        )
        .bind(&tenant)
        .fetch_optional(pool)
        .await?;
        let Some((entries, head_hash, cursor)) = head else {
            continue;
        };
        let subject = settings.subject(&tenant);
        if let Ok(last) = stream.get_last_raw_message_by_subject(&subject).await {
            if let Ok(last) = serde_json::from_slice::<Anchor>(&last.payload) {
                if last.entries == entries && last.head_hash == head_hash {
                    done.push(Anchored::Unchanged(last));
                    continue;
                }
            }
        }
        let mut anchor = Anchor {
            tenant: tenant.clone(),
            entries,
            head_hash,
            cursor,
            anchored_at: crate::audit::format_time(Utc::now()),
            key: settings.key.public_hex(),
            signature: String::new(),
        };
        anchor.signature = hex::encode(signing.sign(anchor.signed_text().as_bytes()).to_bytes());
        let body = serde_json::to_vec(&anchor).map_err(|e| AnchorError::Nats(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("anchor:{tenant}:{}:{}", anchor.entries, anchor.head_hash).as_str(),
        );
        context
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| nats("publishing")(e.into()))?
            .await
            .map_err(|e| nats("awaiting the ack")(e.into()))?;
        done.push(Anchored::Published(anchor));
    }
    Ok(done)
}

/// Every anchor of `tenant`, oldest first.
pub async fn anchors(settings: &AnchorSettings, tenant: &str) -> Result<Vec<Anchor>, AnchorError> {
    let context = context(settings).await?;
    let stream = stream(&context, settings).await?;
    let subject = settings.subject(tenant);
    let mut counts = stream
        .info_with_subjects(&subject)
        .await
        .map_err(|e| nats("counting the anchors")(e.into()))?;
    let mut expected = 0usize;
    while let Some(count) = counts.next().await {
        let (_, count) = count.map_err(|e| nats("counting the anchors")(e.into()))?;
        expected += count;
    }
    if expected == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: context.client().new_inbox(),
            filter_subject: subject,
            ..Default::default()
        })
        .await
        .map_err(|e| nats("reading the anchors")(e.into()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| nats("reading the anchors")(e.into()))?;
    let mut read = Vec::with_capacity(expected);
    while read.len() < expected {
        let message = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .map_err(|_| AnchorError::Nats("reading the anchors timed out".into()))?
            .ok_or_else(|| AnchorError::Nats("the anchors' consumer closed".into()))?
            .map_err(|e| nats("reading the anchors")(e.into()))?;
        // A message that is not an anchor cannot vouch for anything: it counts as a forgery.
        read.push(
            serde_json::from_slice::<Anchor>(&message.payload).unwrap_or_else(|_| Anchor {
                tenant: tenant.to_string(),
                entries: 0,
                head_hash: String::new(),
                cursor: String::new(),
                anchored_at: String::new(),
                key: String::new(),
                signature: String::new(),
            }),
        );
    }
    Ok(read)
}

/// A tenant's anchors, checked as verification needs them: by the entry count they pin.
#[derive(Debug, Clone, Default)]
pub struct TenantAnchors {
    /// Correctly signed anchors by `entries` (the last one published for each count).
    pub by_entries: BTreeMap<i64, Anchor>,
    /// Anchors whose signature does not check with the configured key.
    pub unsigned: Vec<Anchor>,
}

impl TenantAnchors {
    pub fn from_anchors(anchors: Vec<Anchor>, key: &AnchorKey) -> Self {
        let mut checked = Self::default();
        for anchor in anchors {
            if anchor.signed_by(key) {
                checked.by_entries.insert(anchor.entries, anchor);
            } else {
                checked.unsigned.push(anchor);
            }
        }
        checked
    }
}

/// Anchors every chain that moved, every `settings.interval`, in whichever aipm process
/// leads the anchoring, for as long as the returned candidacy lives; does nothing with a key
/// that cannot sign.
pub fn spawn_periodic(pool: PgPool, settings: AnchorSettings) -> Option<Leadership> {
    if !matches!(settings.key, AnchorKey::Signing(_)) {
        return None;
    }
    let candidate_pool = pool.clone();
    Some(Leadership::spawn(&candidate_pool, "audit anchors", move || {
        let (pool, settings) = (pool.clone(), settings.clone());
        async move {
            let mut ticks = tokio::time::interval(settings.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match anchor(&pool, &settings, None).await {
                    Ok(done) => {
                        let published = done
                            .iter()
                            .filter(|a| matches!(a, Anchored::Published(_)))
                            .count();
                        tracing::debug!(published, "anchored the audit chains");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not anchor the audit chains; trying again later")
                    }
                }
            }
        }
    }))
}
