-- The model registry's read models: providers, models and their price periods. Written by
-- the registry projection in the transaction of the events (inline), rebuilt from the log.

create table provider (
    provider_id    uuid primary key,
    tenant_id      text not null,
    name           text not null,
    kind           text not null,
    base_url       text not null,
    -- Where the secret lives (env:… or file:…), never the secret.
    credential_ref text not null,
    enabled        boolean not null,
    version        bigint not null,
    created_at     timestamptz not null,
    updated_at     timestamptz not null
);

create index provider_by_tenant on provider (tenant_id, name);

create table model (
    model_id          uuid primary key,
    tenant_id         text not null,
    -- `<provider name>/<provider_model_id>`: how prompt versions and usage name the model.
    reference         text not null,
    provider_id       uuid not null,
    provider_name     text not null,
    provider_model_id text not null,
    name              text not null,
    context_window    integer,
    capabilities      text[] not null,
    default_params    jsonb,
    fallback          text,
    status            text not null,
    replacement       text,
    -- What still referred to the model when it was deprecated.
    still_referenced  jsonb,
    version           bigint not null,
    created_at        timestamptz not null,
    updated_at        timestamptz not null
);

create unique index model_by_reference on model (tenant_id, reference);

-- One row per price period: from `effective_from` until the next period's start. Money is
-- NUMERIC(20,10): exact, and within what the server decodes safely.
create table model_price (
    model_id              uuid not null,
    tenant_id             text not null,
    effective_from        timestamptz not null,
    input_per_mtok        numeric(20, 10) not null,
    output_per_mtok       numeric(20, 10) not null,
    cached_input_per_mtok numeric(20, 10),
    currency              text not null,
    -- The figures first recorded, once the period has been corrected.
    original              jsonb,
    recorded_at           timestamptz not null,
    corrected_at          timestamptz,
    primary key (model_id, effective_from)
);
