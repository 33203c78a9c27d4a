-- Which event log this database holds: a random id made once, when the database is
-- created (a restored copy keeps it, as it holds the same log). The NATS relay stamps every
-- message with it, so that a stream already fed from another database is refused instead of
-- being taken for this log's: resuming after that log's last cursor would skip events.
create table database_identity (
    only_row   boolean primary key default true check (only_row),
    id         uuid not null,
    created_at timestamptz not null default now()
);

insert into database_identity (id) values (gen_random_uuid());
