-- Image names per project (issue 13): a project's private image name must neither collide
-- with nor reveal another project's, so the key is (project, name), not name alone.
-- Neither SQLite nor portable SQL can change a primary key in place: the table is rebuilt
-- (new table, rows copied, old dropped, new renamed, indexes made again). Portable DDL.

CREATE TABLE images_by_project (
    project      TEXT NOT NULL,
    name         TEXT NOT NULL,
    public       BIGINT NOT NULL DEFAULT 0,
    kernel       TEXT,
    initrd       TEXT,
    cmdline      TEXT,
    disk         TEXT,
    ready_marker TEXT,
    size_bytes   BIGINT NOT NULL,
    created_at   TEXT NOT NULL,
    digest       TEXT,
    format       TEXT,
    virtual_size BIGINT,
    firmware     TEXT NOT NULL DEFAULT 'bios',
    PRIMARY KEY (project, name)
);
INSERT INTO images_by_project (project, name, public, kernel, initrd, cmdline, disk,
    ready_marker, size_bytes, created_at, digest, format, virtual_size, firmware)
SELECT project, name, public, kernel, initrd, cmdline, disk,
    ready_marker, size_bytes, created_at, digest, format, virtual_size, firmware
FROM images;
DROP TABLE images;
ALTER TABLE images_by_project RENAME TO images;
CREATE INDEX images_project ON images (project);
CREATE INDEX images_digest ON images (digest);
CREATE INDEX images_name ON images (name);

-- An instance boots exactly one image row: its project beside its name. Names were unique
-- before this migration, so the one image of that name is the instance's.
ALTER TABLE instances ADD COLUMN image_project TEXT NOT NULL DEFAULT 'default';
UPDATE instances SET image_project = COALESCE(
    (SELECT images.project FROM images WHERE images.name = instances.image), 'default');
