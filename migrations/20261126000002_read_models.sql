-- Read models: plain tables shaped for the queries the API serves. Each one is written
-- only by its projection and can be rebuilt from the event log (aipm replay rebuild).

create table tenant (
    tenant_id  text primary key,
    created_at timestamptz not null
);

create table api_key (
    key_id       uuid primary key,
    tenant_id    text not null,
    name         text not null,
    role         text not null,
    key_hash     text not null unique,
    key_prefix   text not null,
    created_at   timestamptz not null,
    created_by   text not null,
    revoked_at   timestamptz
);

create index api_key_by_tenant on api_key (tenant_id, key_id);

create table prompt_category (
    category_id  uuid primary key,
    tenant_id    text not null,
    name         text not null,
    prompt_count bigint not null default 0,
    version      bigint not null,
    created_at   timestamptz not null,
    updated_at   timestamptz not null
);

create index prompt_category_by_tenant on prompt_category (tenant_id, category_id);

create table prompt (
    prompt_id      uuid primary key,
    tenant_id      text not null,
    name           text not null,
    category_id    uuid,
    description    text not null,
    tags           text[] not null,
    archived       boolean not null,
    latest_version integer not null,
    labels         jsonb not null,
    version        bigint not null,
    created_at     timestamptz not null,
    updated_at     timestamptz not null
);

-- Listing is keyset-paginated by prompt_id (UUIDv7, so in creation order).
create index prompt_by_tenant on prompt (tenant_id, prompt_id);
create index prompt_by_tag on prompt using gin (tags);

create table prompt_version (
    prompt_id  uuid not null,
    version    integer not null,
    tenant_id  text not null,
    template   text not null,
    variables  text[] not null,
    model      text,
    params     jsonb,
    message    text not null,
    created_at timestamptz not null,
    created_by text not null,
    primary key (prompt_id, version)
);
