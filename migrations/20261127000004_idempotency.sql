-- Idempotent commands: a request sent with `Idempotency-Key` is carried out once, and its
-- retries get the first response back.
--
-- A key is scoped to the API key that sent it (and so to its tenant): two callers can
-- never see each other's responses or collide. Rows expire `expires_at`; an expired row
-- counts as absent and a periodic task deletes it.

-- One row per key: the claim on it and, once the first attempt has answered, its response.
create table idempotency_request (
    tenant_id        text not null,
    owner_key_id     text not null,
    idempotency_key  text not null,
    -- SHA-256 of method, path, If-Match, X-Reason, Content-Type and body: a retry must match it.
    fingerprint      text not null,
    -- The id a creating request gives its new aggregate; every retry reuses it.
    resource_id      uuid not null,
    -- The attempt holding the claim; a retry may take over an attempt whose lease ran out
    -- (its process died) and only the holder may store the response.
    attempt          uuid not null,
    locked_until     timestamptz not null,
    created_at       timestamptz not null default now(),
    expires_at       timestamptz not null,
    response_status  smallint,
    response_headers jsonb,
    response_body    bytea,
    primary key (tenant_id, owner_key_id, idempotency_key)
);

create index idempotency_request_expiry on idempotency_request (expires_at);

-- What a keyed command committed: written by the same statement that appends its events, so
-- that a retry after a crash between commit and response can rebuild the response from it.
-- Its primary key is also the fence that keeps a key from appending twice.
create table idempotency_outcome (
    tenant_id       text not null,
    owner_key_id    text not null,
    idempotency_key text not null,
    aggregate_type  text not null,
    aggregate_id    text not null,
    first_sequence  bigint not null,
    last_sequence   bigint not null,
    primary key (tenant_id, owner_key_id, idempotency_key),
    constraint idempotency_outcome_request_fkey foreign key (tenant_id, owner_key_id, idempotency_key)
        references idempotency_request on delete cascade
);
