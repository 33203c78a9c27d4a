-- Analytics: the roll-ups also key on the prompt version and label a call used, and count
-- errors and the last call; what sums cannot give (latency percentiles, metric means) is
-- kept per day, prompt version, label and feature in usage_analytics as a mergeable summary
-- (domain::call_summary: a DDSketch of latencies and each metric's sum and count).
alter table usage_rollup
    add column prompt_version integer,
    add column prompt_label   text,
    add column errors         bigint not null default 0,
    add column last_used      timestamptz;

drop index usage_rollup_key;
create unique index usage_rollup_key
    on usage_rollup (tenant_id, day, model, prompt_id, prompt_version, prompt_label, feature, key_id, currency)
    nulls not distinct;

-- Analytics of one prompt read its rows.
create index usage_rollup_by_prompt on usage_rollup (tenant_id, prompt_id, day) where prompt_id is not null;

create table usage_analytics (
    tenant_id      text not null,
    day            date not null,
    prompt_id      uuid,
    prompt_version integer,
    prompt_label   text,
    feature        text,
    -- domain::call_summary::CallSummary as JSON
    summary        jsonb not null
);

create unique index usage_analytics_key
    on usage_analytics (tenant_id, day, prompt_id, prompt_version, prompt_label, feature) nulls not distinct;
