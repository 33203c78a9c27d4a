-- The process holding an idempotency claim, so that a retry after that process died takes
-- the claim over at once instead of waiting for its lease to run out.
--
-- A serving process holds, for as long as it lives, a session advisory lock of its own on a
-- connection of its own (the lock of the role `process <uuid>`, `projections::leader`); the
-- claim names that lock. When its connection ends (the process exited or was killed) the
-- lock goes, and any process can see it gone in `pg_locks`.
alter table idempotency_request add column holder text;

-- Whether a session holds the advisory lock named `lock_name` in this database: the key is
-- `hashtextextended(lock_name, 0)`, which pg_locks shows as its high and low 32 bits.
create function idempotency_holder_alive(lock_name text) returns boolean
language sql stable
as $$
    select exists (
        select 1 from pg_locks
        where locktype = 'advisory' and granted and objsubid = 1
          and database = (select oid from pg_database where datname = current_database())
          and ((classid::bigint << 32) | objid::bigint) = hashtextextended(lock_name, 0)
    )
$$;
