-- Where readers of the global order may read up to: the oldest transaction still running
-- *in this database*, not in the whole cluster.
--
-- Readers take only events of transactions older than the oldest one still running, so
-- that no event can commit later before their cursor. `pg_snapshot_xmin` gives the oldest
-- running transaction of the cluster, so a long transaction in any other database held
-- every projection, the feeds and every command's read-your-writes wait. A transaction in
-- another database cannot write to this `events` table, so it is left out here.
--
-- The database of a running transaction is read from pg_stat_get_activity, whose
-- transaction ids and database ids any role may read. A transaction not found there (a
-- prepared transaction, or one that ended meanwhile) counts as this database's: the
-- horizon can only be too early, never too late.
--
-- Readers call it as `(select events_horizon())`, so that it is computed once per query; it
-- is stable, so it sees the snapshot of the query that calls it.
create function events_horizon() returns xid8
language sql stable
as $$
    select coalesce(min(running.xid), pg_snapshot_xmax(pg_current_snapshot()))
    from pg_snapshot_xip(pg_current_snapshot()) as running(xid)
    where not exists (
        select 1 from pg_stat_get_activity(null) as other
        where other.backend_xid = xid(running.xid)
          and other.datid <> (select oid from pg_database where datname = current_database())
    )
$$;
