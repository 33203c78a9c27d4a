-- A key's own rate limit (both null: the server's default applies). Read by every
-- authenticated request together with the key, so that a change takes effect at once.
alter table api_key
    add column rate_limit_per_second double precision,
    add column rate_limit_burst      integer,
    add constraint api_key_rate_limit_complete
        check ((rate_limit_per_second is null) = (rate_limit_burst is null));

-- Authentication finds a key by the public prefix of its secret and then compares the
-- hash in constant time, so that the lookup never compares secret-derived bytes.
create index api_key_by_prefix on api_key (key_prefix);
