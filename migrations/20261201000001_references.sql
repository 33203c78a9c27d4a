-- References between aggregates that the write side enforces: a prompt may only be in a
-- category that exists, and a category cannot be deleted while a prompt is in it.
--
-- Like unique_claim, these rows are written by the same statement that appends the events
-- that make or end a reference, and checked by foreign keys, not by reading a read model:
-- "create a prompt in C" and "delete C" racing each other cannot both commit, however far
-- behind any read model is. A target is registered by the event that creates it and
-- unregistered by the one that deletes it; the foreign key then refuses the delete while
-- any reference to it remains.
create table referable (
    tenant_id text not null,
    -- The target's aggregate type, e.g. prompt_category.
    scope     text not null,
    target_id text not null,
    primary key (tenant_id, scope, target_id)
);

create table reference (
    tenant_id text not null,
    scope     text not null,
    target_id text not null,
    -- The referring aggregate.
    owner_id  text not null,
    primary key (tenant_id, scope, target_id, owner_id),
    constraint reference_target_fkey foreign key (tenant_id, scope, target_id) references referable
);

-- The categories that exist, and the category each prompt is in, folded from the log.
insert into referable (tenant_id, scope, target_id)
select created.tenant_id, 'prompt_category', created.aggregate_id
from events created
where created.aggregate_type = 'prompt_category' and created.event_type = 'CategoryCreated'
  and not exists (
      select 1 from events deleted
      where deleted.aggregate_type = 'prompt_category' and deleted.aggregate_id = created.aggregate_id
        and deleted.event_type = 'CategoryDeleted');

-- A prompt left in a deleted category by the race this table closes gets no reference.
insert into reference (tenant_id, scope, target_id, owner_id)
select latest.tenant_id, 'prompt_category', latest.category, latest.aggregate_id
from (
    select distinct on (aggregate_id) aggregate_id, tenant_id,
           coalesce(payload -> 'PromptCreated' ->> 'category',
                    payload -> 'PromptMovedToCategory' ->> 'category') as category
    from events
    where aggregate_type = 'prompt' and event_type in ('PromptCreated', 'PromptMovedToCategory')
    order by aggregate_id, sequence desc
) latest
where latest.category is not null
  and exists (
      select 1 from referable r
      where r.tenant_id = latest.tenant_id and r.scope = 'prompt_category' and r.target_id = latest.category);
