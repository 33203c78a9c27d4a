-- A call the gateway made records each attempt (the model tried, its outcome, latency, the
-- provider's status and Retry-After, the wait before the next try) beside its usage record.
-- Records clients send themselves have none.
alter table usage_record add column attempts jsonb;
