-- Host identity (issue 11): hosts enrol with a one-time join token and get a certificate
-- from the cloud's CA; the store binds each host name to its certificate and keeps the
-- serials of revoked ones.

-- One-time enrolment tokens, stored as the SHA-256 of their secret.
CREATE TABLE join_tokens (
    token_hash  TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT,
    used_by     TEXT
);

-- The certificate each enrolled host name is bound to (one per name).
CREATE TABLE host_identities (
    name        TEXT PRIMARY KEY,
    serial      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    enrolled_at TEXT NOT NULL
);

-- Certificates refused from now on (`nimbus host remove`).
CREATE TABLE revoked_certs (
    serial      TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    revoked_at  TEXT NOT NULL
);
