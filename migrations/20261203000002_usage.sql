-- Usage records: telemetry, not events. Append-only, written by ingestion (never updated
-- but by recosting), partitioned by month of the record's own timestamp; a month's
-- partition is created when its first record arrives (`usage_partition_for`).
create table usage_record (
    tenant_id           text not null,
    -- Chosen by the client; unique per tenant through `usage_record_id`.
    record_id           text not null,
    ts                  timestamptz not null,
    -- A model reference, provider/model_id, as sent.
    model               text not null,
    prompt_id           uuid,
    prompt_version      integer,
    -- The label the version was resolved from at ingestion, when one was sent.
    prompt_label        text,
    experiment_id       uuid,
    variant             text,
    feature             text,
    subject             text,
    input_tokens        bigint not null,
    output_tokens       bigint not null,
    cached_input_tokens bigint not null,
    latency_ms          integer,
    -- ok, or an error kind
    status              text not null,
    metrics             jsonb,
    -- Exact cost at the price in force at `ts`; both null when the record is uncosted
    -- (its model is unknown, or had no price then).
    cost                numeric(38, 16),
    currency            text,
    key_id              uuid not null,
    ingested_at         timestamptz not null default now()
) partition by range (ts);

create index usage_record_by_tenant_time on usage_record (tenant_id, ts desc, record_id desc);

-- A record id counts once per tenant whatever its timestamp. The partitioned table cannot
-- hold that key (a unique key there must include the partition key); this table does, and
-- ingestion claims ids here in the transaction that inserts the records.
create table usage_record_id (
    tenant_id text not null,
    record_id text not null,
    primary key (tenant_id, record_id)
);

-- Creates the partition holding `at`'s month if it is missing; safe to race.
create function usage_partition_for(at timestamptz) returns void
language plpgsql as $$
declare
    month_start timestamptz := date_trunc('month', at at time zone 'UTC') at time zone 'UTC';
    name text := 'usage_record_' || to_char(month_start at time zone 'UTC', 'YYYY_MM');
begin
    if to_regclass(name) is not null then
        return;
    end if;
    execute format(
        'create table if not exists %I partition of usage_record for values from (%L) to (%L)',
        name, month_start, month_start + interval '1 month');
exception when duplicate_table or unique_violation then
    null; -- another ingestion created it meanwhile
end
$$;

-- Spend roll-ups: per tenant, day (UTC), model, prompt, feature, key and currency, kept
-- current by ingestion in the transaction that stores the records (never a scan of the
-- records on a read). Uncosted records count in `calls` and `uncosted`, with a null currency.
create table usage_rollup (
    tenant_id           text not null,
    day                 date not null,
    model               text not null,
    prompt_id           uuid,
    feature             text,
    key_id              uuid not null,
    currency            text,
    calls               bigint not null,
    input_tokens        bigint not null,
    output_tokens       bigint not null,
    cached_input_tokens bigint not null,
    cost                numeric(38, 16) not null,
    uncosted            bigint not null
);

create unique index usage_rollup_key
    on usage_rollup (tenant_id, day, model, prompt_id, feature, key_id, currency) nulls not distinct;
