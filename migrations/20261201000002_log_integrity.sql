-- The log's global order rests on every event carrying the id of the transaction that
-- inserted it (see 20261126000001_event_store.sql). An explicit value could place an event
-- anywhere in that order, before cursors that readers have already passed: refused. A
-- restore copies the log with COPY before this trigger exists (pg_dump creates triggers
-- after the data), so restoring still works; `aipm` then checks at start that the log's
-- ids are below the cluster's (see README, "Restoring the database").
create function events_transaction_id_is_own() returns trigger language plpgsql as $$
begin
    raise exception 'events.transaction_id is assigned by the database; % was given', new.transaction_id
        using errcode = 'check_violation';
end $$;

create trigger events_transaction_id_is_own before insert on events
    for each row when (new.transaction_id <> pg_current_xact_id())
    execute function events_transaction_id_is_own();

-- Row triggers do not see TRUNCATE: the log cannot be emptied behind the append-only
-- trigger's back either.
create trigger events_not_truncated before truncate on events
    for each statement execute function events_are_append_only();
