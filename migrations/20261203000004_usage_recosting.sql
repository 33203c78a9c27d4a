-- Recosting: when a model's prices are corrected (or a period is set or withdrawn), the
-- records they apply to are priced again. A record keeps what it first cost; a roll-up row
-- keeps the sum of its records' first costs beside the sum of their current ones, and how
-- many of them were priced again, so that reports show both figures.
alter table usage_record
    add column recosted          boolean not null default false,
    add column original_cost     numeric(38, 16),
    add column original_currency text;

alter table usage_rollup
    add column original_cost numeric(38, 16) not null default 0,
    add column recosted      bigint not null default 0;

update usage_rollup set original_cost = cost;

-- Recosting reads a model's records from a point in time on through the tenant's time
-- index (usage_record_by_tenant_time): price corrections are rare, and an index of its own
-- would cost every ingested record an insert (about 5 % of ingestion's throughput).
