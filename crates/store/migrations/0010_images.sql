-- Real guests (issue 13): uploaded images stored by digest, owned by a project and private
-- unless public; an image size quota; keypairs; what an instance's cloud-init seed carries.
-- Portable DDL like 0001: runs unchanged on SQLite and PostgreSQL.

-- Images registered before (by path, admin) stay public images of the default project.
ALTER TABLE images ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
ALTER TABLE images ADD COLUMN public BIGINT NOT NULL DEFAULT 1;
-- `sha256:<hex>` of an uploaded image's bytes; NULL for images registered by path.
ALTER TABLE images ADD COLUMN digest TEXT;
-- qcow2 | raw, as inspection found it; NULL for images registered by path.
ALTER TABLE images ADD COLUMN format TEXT;
ALTER TABLE images ADD COLUMN virtual_size BIGINT;
-- bios | uefi: the firmware a disk image boots with.
ALTER TABLE images ADD COLUMN firmware TEXT NOT NULL DEFAULT 'bios';
CREATE INDEX images_project ON images (project);
CREATE INDEX images_digest ON images (digest);

-- MiB of images a project may own (NULL: unlimited).
ALTER TABLE quotas ADD COLUMN image_mib BIGINT;

CREATE TABLE keypairs (
    project     TEXT NOT NULL,
    name        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (project, name)
);

-- Copied at create, so deleting a keypair later does not change an instance's seed.
ALTER TABLE instances ADD COLUMN key_name TEXT;
ALTER TABLE instances ADD COLUMN public_key TEXT;
-- Base64 of the user-data (it may be binary, e.g. gzip), at most 16 KiB decoded.
ALTER TABLE instances ADD COLUMN user_data TEXT;
-- When the guest reported cloud-init finished (NULL: not yet, or no cloud-init).
ALTER TABLE instances ADD COLUMN guest_ready_at TEXT;

-- The host's image cache as its agent last reported it (JSON: digests, sizes, bound), for
-- `host show` and for placement, which prefers hosts that hold the image.
ALTER TABLE hosts ADD COLUMN image_cache TEXT;
