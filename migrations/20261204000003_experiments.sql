-- Experiments as the API reads them (the `experiment` projection, inline).
create table experiment (
    experiment_id uuid primary key,
    tenant_id     text not null,
    name          text not null,
    -- draft, running, paused, stopped or concluded
    status        text not null,
    -- domain::experiment::ExperimentSpec as JSON
    spec          jsonb not null,
    salt          text not null,
    winner        text,
    -- domain::experiment::Promotion as JSON, when concluding promoted the winner
    promotion     jsonb,
    -- Weights or targeting changed after it started: results flag it.
    reallocated_while_running boolean not null default false,
    version       bigint not null,
    created_at    timestamptz not null,
    updated_at    timestamptz not null,
    started_at    timestamptz
);

create index experiment_by_tenant on experiment (tenant_id, created_at desc);

-- Outcomes reported after the call (a conversion, a rating): telemetry, not events, like
-- usage records. A subject's value for a metric is the sum of its observations.
create table experiment_observation (
    tenant_id     text not null,
    experiment_id uuid not null,
    subject       text not null,
    variant       text not null,
    metric        text not null,
    value         double precision not null,
    observed_at   timestamptz not null,
    key_id        uuid not null,
    received_at   timestamptz not null default now()
);

create index experiment_observation_by_experiment on experiment_observation (tenant_id, experiment_id, metric);

-- Results read the usage records of one experiment.
create index usage_record_by_experiment on usage_record (tenant_id, experiment_id)
    where experiment_id is not null;
