-- Four-eyes approval: protected scopes and change requests, written by the approval
-- projection in the transaction of the events (inline).
create table protection (
    tenant_id  text not null,
    -- As written in paths: config:limits., prompt:<id>:production
    scope      text not null,
    -- {"kind": "config", "prefix": …} or {"kind": "prompt_label", "prompt": …, "label": …}
    definition jsonb not null,
    version    bigint not null,
    created_at timestamptz not null,
    primary key (tenant_id, scope)
);

create table change_request (
    request_id      uuid primary key,
    tenant_id       text not null,
    -- {"kind": "set_config", "key": …, "value": …} and the like
    change          jsonb not null,
    scope           text not null,
    -- proposed, approved or rejected
    state           text not null,
    proposer_key_id text not null,
    proposer_name   text not null,
    reason          text,
    decided_by_key_id text,
    decided_by_name text,
    decision_reason text,
    applied_version bigint,
    version         bigint not null,
    created_at      timestamptz not null,
    decided_at      timestamptz
);

create index change_request_by_tenant on change_request (tenant_id, created_at);
