-- Budgets: what a tenant means to spend on a scope per period, written by the budget
-- projection in the transaction of the events (inline). Spend arrives with usage.
create table budget (
    budget_id   uuid primary key,
    tenant_id   text not null,
    name        text not null,
    -- tenant, model, prompt, feature or key; scope_id names the model (its reference), the
    -- prompt or key (its id) or the feature; null for the tenant.
    scope_kind  text not null,
    scope_id    text,
    -- daily, weekly or monthly
    period      text not null,
    amount      numeric(20, 10) not null,
    currency    text not null,
    -- Percentages of the amount, ascending.
    thresholds  integer[] not null,
    -- soft or hard
    enforcement text not null,
    version     bigint not null,
    created_at  timestamptz not null,
    updated_at  timestamptz not null
);

create index budget_by_tenant on budget (tenant_id, name);
create index budget_by_scope on budget (tenant_id, scope_kind, scope_id);
