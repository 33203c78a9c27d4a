-- Bulk jobs and their items, written by the bulk projection in the transaction of the
-- job's events (inline). The job's own log is the truth; these tables answer its progress.
create table bulk_job (
    job_id              uuid primary key,
    tenant_id           text not null,
    -- The operation's name (`prompt.tag`) and its parameters as submitted.
    operation           text not null,
    params              jsonb not null,
    -- best_effort or atomic
    mode                text not null,
    -- The filter the targets were resolved from, when they were.
    filter              jsonb,
    -- queued, running, done, failed, cancelled, compensating or compensated
    status              text not null,
    cancel_requested    boolean not null default false,
    -- Why an atomic job undid its items: {"kind": "item_failed", "index": 3} or {"kind": "cancelled"}.
    compensation_cause  jsonb,
    total               integer not null,
    done                integer not null default 0,
    failed              integer not null default 0,
    skipped             integer not null default 0,
    compensated         integer not null default 0,
    compensation_failed integer not null default 0,
    submitter_key_id    text not null,
    submitter_name      text not null,
    version             bigint not null,
    created_at          timestamptz not null,
    updated_at          timestamptz not null,
    finished_at         timestamptz
);

create index bulk_job_by_tenant on bulk_job (tenant_id, job_id desc);
-- What the job runners look for: jobs not finished.
create index bulk_job_unfinished on bulk_job (created_at)
    where status in ('queued', 'running', 'compensating');

create table bulk_item (
    job_id             uuid not null,
    item_index         integer not null,
    target             text not null,
    -- pending, applied, failed, skipped, compensated or compensation_failed
    status             text not null,
    -- Why the item failed, was skipped, or could not be undone.
    error              text,
    -- The target's version after the item (or after its undo, once compensated).
    target_version     bigint,
    primary key (job_id, item_index)
);

-- "Changed by bulk job X": the audit log filtered by the causation of the entries' events.
create index audit_entry_by_causation on audit_entry (tenant_id, (metadata ->> 'causation_id'), chain_seq);
