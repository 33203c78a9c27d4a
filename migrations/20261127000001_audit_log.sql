-- The audit log: one entry per event, hash-chained per tenant, written by the `audit`
-- projection and checked against the event log by `aipm audit verify`.
--
-- hash = hex(SHA-256(prev_hash || canonical_json(entry))), where entry is the JSON object of
-- every column below except prev_hash and hash (README.md, "Audit log", gives the exact
-- form). The first entry of a tenant has prev_hash = 64 zeros.
create table audit_entry (
    tenant_id         text not null,
    -- The entry's place in its tenant's chain: 1, 2, 3, … without gaps.
    chain_seq         bigint not null check (chain_seq > 0),
    -- The event's place in the global order.
    transaction_id    bigint not null,
    position          bigint not null,
    recorded_at       timestamptz not null,
    actor_key_id      text,
    actor_name        text,
    request_id        text,
    client_addr       text,
    user_agent        text,
    reason            text,
    aggregate_type    text not null,
    aggregate_id      text not null,
    aggregate_version bigint not null,
    event_type        text not null,
    event_version     text not null,
    -- The event's metadata and payload as stored in `events`.
    metadata          jsonb not null,
    payload           jsonb not null,
    -- What the event changed: {"<field>": {"before": …, "after": …}} over the top-level
    -- fields of the aggregate's state; null for aggregate types the projection cannot fold.
    changes           jsonb,
    prev_hash         text not null check (prev_hash ~ '^[0-9a-f]{64}$'),
    hash              text not null check (hash ~ '^[0-9a-f]{64}$'),
    primary key (tenant_id, chain_seq)
);

-- One entry per event.
create unique index audit_entry_by_cursor on audit_entry (transaction_id, position);
-- The filters of GET /v1/audit; each ends in chain_seq so that a filtered page is read in
-- chain order straight from the index.
create index audit_entry_by_actor_key on audit_entry (tenant_id, actor_key_id, chain_seq);
create index audit_entry_by_actor_name on audit_entry (tenant_id, actor_name, chain_seq);
create index audit_entry_by_aggregate on audit_entry (tenant_id, aggregate_type, aggregate_id, chain_seq);
create index audit_entry_by_event_type on audit_entry (tenant_id, event_type, chain_seq);
create index audit_entry_by_time on audit_entry (tenant_id, recorded_at);
create index audit_entry_by_request on audit_entry (tenant_id, request_id);

-- Entries are never edited or deleted (a rebuild empties the table with TRUNCATE, which
-- row triggers do not see).
create function audit_entries_are_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'audit entries are append-only: % is not allowed', tg_op;
end $$;

create trigger audit_entry_append_only before update or delete on audit_entry
    for each row execute function audit_entries_are_append_only();

-- The state of every aggregate the audit projection has folded, as serialised JSON, so that
-- the next event's entry can say which fields it changed.
create table audit_aggregate_state (
    aggregate_type text not null,
    aggregate_id   text not null,
    version        bigint not null,
    state          jsonb not null,
    primary key (aggregate_type, aggregate_id)
);
