-- Incidents as the API lists and shows them (the incident projection). `timeline` holds
-- the opening, each update and the resolution, oldest first; `related_changes` what the
-- opening recorded.
create table incident (
    incident_id     uuid primary key,
    tenant_id       text not null,
    severity        text not null,
    title           text not null,
    -- investigating, identified, monitoring or resolved
    status          text not null,
    -- manual or auto
    opened_by       text not null,
    affected        jsonb not null,
    related_changes jsonb not null,
    timeline        jsonb not null,
    summary         text,
    resolved_at     timestamptz,
    version         bigint not null,
    created_at      timestamptz not null,
    updated_at      timestamptz not null
);

create index incident_by_tenant on incident (tenant_id, created_at desc, incident_id desc);

-- An incident's related changes are the tenant's events of the 24 hours before it opened.
create index events_by_tenant_time on events (tenant_id, recorded_at);
