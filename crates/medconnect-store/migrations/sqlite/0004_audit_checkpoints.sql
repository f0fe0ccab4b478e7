-- Signed checkpoints of the audit chain. Each row is an Ed25519 signature by the audit signing
-- key over the hash of entry `seq` (the message layout is in medconnect-domain's checkpoint
-- module). When retention removes old entries, the checkpoint at the last removed entry is
-- kept, and verification starts from it.
CREATE TABLE audit_checkpoints (
    seq        INTEGER PRIMARY KEY,
    head_hash  TEXT NOT NULL,
    at         TEXT NOT NULL,
    -- entries the log held up to and including seq when the checkpoint was signed
    entries    INTEGER NOT NULL,
    -- 64 hex digits
    public_key TEXT NOT NULL,
    -- 128 hex digits
    signature  TEXT NOT NULL
);
