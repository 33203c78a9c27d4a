-- A restored event is appended under the new cluster's transaction ids and keeps its place
-- in the log it was first written to in its metadata (`original_cursor`). Its audit entry
-- states, and hashes, that original place, so that a restored chain has the hashes it had
-- and verifies against anchors published before the backup; `transaction_id` and
-- `position` stay this log's, which readers order and compare by.
alter table audit_entry add column origin_cursor text;
