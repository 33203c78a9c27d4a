-- Export jobs, written by the export projection in the transaction of the job's events
-- (inline). The job's own log is the truth; this table answers its status and progress.
create table export_job (
    export_id        uuid primary key,
    tenant_id        text not null,
    -- The report's kind (`spend`, `usage`, …), the format (`csv`, `json`, `ndjson`, `xlsx`,
    -- `pdf`) and the parameters as requested.
    report           text not null,
    format           text not null,
    params           jsonb not null,
    -- The past instant asked for, when one was.
    requested_as_of  timestamptz,
    -- queued, running, done, failed, cancelled or expired
    status           text not null,
    -- What the file reflects, fixed by the job's first start: the global cursor of the last
    -- event and the instant.
    data_cursor      text,
    data_instant     timestamptz,
    attempts         integer not null default 0,
    rows_written     bigint not null default 0,
    percent          smallint,
    file_name        text,
    size_bytes       bigint,
    content_sha256   text,
    data_sha256      text,
    expires_at       timestamptz,
    failure          text,
    requester_key_id text not null,
    requester_name   text not null,
    version          bigint not null,
    created_at       timestamptz not null,
    updated_at       timestamptz not null,
    finished_at      timestamptz
);

create index export_job_by_tenant on export_job (tenant_id, export_id desc);
-- What the export runners look for: jobs to run, and files to delete when they expire.
create index export_job_unfinished on export_job (created_at) where status in ('queued', 'running');
create index export_job_expiring on export_job (expires_at) where status = 'done';
