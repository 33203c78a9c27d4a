-- Configuration: each key of a tenant with its JSON Schema and its value. Written by the
-- config projection in the transaction of the events (inline), rebuilt from the log.
create table config_entry (
    tenant_id  text not null,
    key        text not null,
    -- The JSON Schema values must match; null when none was declared.
    schema     jsonb,
    -- Null when the key has no value (never set, or cleared).
    value      jsonb,
    version    bigint not null,
    updated_at timestamptz not null,
    primary key (tenant_id, key)
);

-- The whole configuration as it was at an instant is folded from the log: the last value
-- event of each key up to then. Only configuration events pay for this index.
create index events_config_by_tenant on events (tenant_id, aggregate_id, sequence)
    where aggregate_type = 'config';
