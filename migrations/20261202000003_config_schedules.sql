-- Scheduled configuration changes, written by the config projection (inline). A scheduler
-- in every aipm process applies the pending ones whose time has come.
create table config_schedule (
    schedule_id         uuid primary key,
    tenant_id           text not null,
    key                 text not null,
    value               jsonb not null,
    at                  timestamptz not null,
    -- pending, applied or cancelled
    state               text not null,
    -- For a cancelled schedule: cancelled, conflict or schema_changed.
    cancelled_because   text,
    -- For a conflict: the key's version whose change cancelled it.
    conflicting_version bigint,
    -- Who scheduled it and why (the applied change says it applies this schedule).
    scheduled_by        text,
    reason              text,
    created_at          timestamptz not null,
    resolved_at         timestamptz
);

create index config_schedule_by_tenant on config_schedule (tenant_id, at);
-- What the scheduler looks for: pending schedules by time.
create index config_schedule_pending on config_schedule (at) where state = 'pending';
