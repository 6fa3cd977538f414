-- Which controllers hold a copy of which uploaded image's bytes (issue 12): each controller
-- keeps its own content-addressed copies; one that lacks a blob fetches it from a live
-- holder (a controller whose heartbeat is fresh, see 0017), and a background pass copies
-- every blob to every live controller, so that losing one controller loses no image.
-- Rows of controllers that are gone are forgotten by that pass. Keyed by the digest only,
-- so that an object store can later take the place of the copies without a new schema.
-- Portable DDL: runs unchanged on SQLite and PostgreSQL.

CREATE TABLE image_holders (
    digest     TEXT NOT NULL,
    controller TEXT NOT NULL,
    PRIMARY KEY (digest, controller)
);
CREATE INDEX image_holders_controller ON image_holders (controller);
