-- The event store: the append-only log that everything else is derived from.
--
-- The first seven columns are the ones postgres-es reads. The rest give the log one
-- global order that readers can tail without ever skipping a late commit:
--   * position is assigned at INSERT (so it can commit out of order),
--   * transaction_id is the inserting transaction, and a reader only takes events of
--     transactions older than the oldest one still running (pg_snapshot_xmin), ordered by
--     (transaction_id, position). Writers never take a table lock.
create table events (
    aggregate_type text not null,
    aggregate_id   text not null,
    sequence       bigint not null check (sequence > 0),
    event_type     text not null,
    event_version  text not null,
    payload        jsonb not null,
    metadata       jsonb not null,
    tenant_id      text not null,
    position       bigint generated always as identity,
    transaction_id xid8 not null default pg_current_xact_id(),
    recorded_at    timestamptz not null default now(),
    primary key (aggregate_type, aggregate_id, sequence)
);

create unique index events_global_order on events (transaction_id, position);

-- Events are facts: never edited, never deleted.
create function events_are_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'events are append-only: % is not allowed', tg_op;
end $$;

create trigger events_append_only before update or delete on events
    for each row execute function events_are_append_only();

-- Aggregate state every few events, so that loading a long-lived aggregate reads a
-- snapshot and the events after it instead of its whole history.
create table snapshots (
    aggregate_type   text not null,
    aggregate_id     text not null,
    last_sequence    bigint not null check (last_sequence >= 0),
    current_snapshot bigint not null check (current_snapshot >= 0),
    payload          jsonb not null,
    primary key (aggregate_type, aggregate_id)
);

-- Names that must be unique per tenant (prompt names, category names). Written in the
-- same statement as the events that take or release them, so two concurrent creates
-- with one name cannot both commit.
create table unique_claim (
    tenant_id text not null,
    scope     text not null,
    claim_key text not null,
    owner_id  text not null,
    primary key (tenant_id, scope, claim_key)
);

-- How far each projection has applied the global order; updated in the same transaction
-- as its read-model writes.
create table projection_checkpoint (
    projection_name text primary key,
    transaction_id  bigint not null default 0,
    position        bigint not null default 0,
    updated_at      timestamptz not null default now()
);
