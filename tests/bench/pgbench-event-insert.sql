-- The raw PostgreSQL ceiling for aipm's writes: one event-shaped INSERT per transaction
-- into a table shaped like `events` (same columns, defaults, primary key and global-order
-- index), with a payload and metadata of the size a created prompt carries.
insert into bench_event (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant_id)
values ('prompt', gen_random_uuid()::text, 1, 'PromptCreated', '1.0.0',
        '{"PromptCreated":{"tenant":"bench","name":"load-0123456789","category":null,"description":"","tags":[]}}',
        '{"tenant":"bench","actor_key_id":"01a219bf-d81e-7063-93bb-ab80e275e1ae","actor_name":"load","request_id":"e3642e20-fc1c-4c31-9142-a12005a970ab","client_addr":"127.0.0.1","timestamp":"2026-11-26T21:25:32.954416Z"}',
        'bench');
