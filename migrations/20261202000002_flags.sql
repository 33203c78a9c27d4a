-- Feature flags of each tenant, written by the flag projection in the transaction of the
-- events (inline). Every aipm process also keeps them in memory, kept current from the
-- log, and evaluates them from there.
create table flag (
    tenant_id  text not null,
    key        text not null,
    -- Fixed when the flag is created; with the key and a subject it decides the answer.
    salt       text not null,
    enabled    boolean not null,
    -- Basis points of subjects the flag is on for (10000 = 100 %).
    rollout    integer not null,
    -- [{name, weight}]
    variants   jsonb not null,
    version    bigint not null,
    updated_at timestamptz not null,
    primary key (tenant_id, key)
);
