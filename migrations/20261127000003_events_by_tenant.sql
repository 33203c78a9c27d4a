-- The live feed replays one tenant's events in global order from a subscriber's cursor:
-- without this index that walks the whole log's global order, every tenant's events.
create index events_by_tenant on events (tenant_id, transaction_id, position);
