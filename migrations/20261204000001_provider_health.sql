-- How each provider is probed (`domain::health::HealthCheck` as JSON); '{}' reads as the
-- defaults. Written by the registry projection from `ProviderHealthCheckSet`.
alter table provider add column health_check jsonb not null default '{}';

-- Each provider's health state as its `ProviderHealth` aggregate last recorded it (the
-- health projection); a provider without a row has not been probed yet.
create table provider_health (
    provider_id uuid primary key,
    tenant_id   text not null,
    -- healthy, degraded or down
    state       text not null,
    since       timestamptz not null,
    version     bigint not null
);

-- Probe results: telemetry, not events. Written by the prober, one row per probe; the
-- prober deletes rows older than a week.
create table provider_probe (
    provider_id uuid not null,
    tenant_id   text not null,
    at          timestamptz not null,
    ok          boolean not null,
    latency_ms  integer not null,
    -- The HTTP status, when an answer came.
    status_code integer,
    -- What failed: a timeout, a refused connection, a 5xx.
    error       text
);

create index provider_probe_by_provider on provider_probe (provider_id, at desc);
create index provider_probe_by_time on provider_probe (at);
