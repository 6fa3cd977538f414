-- Guest readiness (issue 13): what last said the instance's guest is up since its boot
-- (`metadata`: cloud-init reported to the metadata service; `console`: the image's ready
-- line; `resumed`: restored or migrated while ready), from the agents' reports; NULL: not
-- ready or not known. Portable DDL: runs unchanged on SQLite and PostgreSQL.

ALTER TABLE instances ADD COLUMN guest_ready TEXT;
