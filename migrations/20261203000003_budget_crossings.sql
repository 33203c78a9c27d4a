-- The thresholds a budget's spend has crossed in its latest period with a crossing: the
-- budget watcher compares the spend with them, so a crossing is recorded once.
alter table budget
    add column crossed_period date,
    add column crossed integer[] not null default '{}',
    -- The start of the latest period recorded as started (BudgetPeriodStarted).
    add column current_period date;
