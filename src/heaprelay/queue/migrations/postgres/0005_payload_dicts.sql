-- Payloads may be stored zstd-compressed with a dictionary trained on the queue's own
-- payloads (queue/_payload.py); rows written before stay as they are (raw JSON) and are read
-- as before. Dictionaries are never changed or deleted: rows refer to them by id.
CREATE TABLE payload_dicts (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dict bytea NOT NULL,
    created_at double precision NOT NULL
);
