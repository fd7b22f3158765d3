-- The write-ahead journal: runs of apply and rollback, and every step they take.
-- A step is recorded (state 'pending') and made durable BEFORE the store is touched, with the
-- original bytes saved in the state folder's backups/ (content-addressed) and the original owner,
-- mode and extended attributes in meta_json; it is marked 'done' after.

CREATE TABLE runs (
    id            INTEGER PRIMARY KEY,
    kind          TEXT    NOT NULL,               -- apply | rollback
    plan_id       INTEGER REFERENCES plans(id),
    undoes_run    INTEGER REFERENCES runs(id),    -- rollback: the apply run it undoes
    store_path    TEXT    NOT NULL,
    started_at    TEXT    NOT NULL,
    finished_at   TEXT,
    status        TEXT    NOT NULL                -- running | done
);

CREATE TABLE journal (
    run_id        INTEGER NOT NULL REFERENCES runs(id),
    seq           INTEGER NOT NULL,               -- order of the steps; rollback walks it backwards
    action        TEXT    NOT NULL,               -- rewrite | restore | mkdir | move | xattr | rmdir | undo
    rel_path      TEXT    NOT NULL,
    target_path   TEXT,                           -- move: where to; xattr: the attribute name
    undoes_seq    INTEGER,                        -- rollback: the step of the undone run it reverses
    before_sha256 TEXT    NOT NULL DEFAULT '',    -- what the file must hold before the step
    after_sha256  TEXT    NOT NULL DEFAULT '',    -- what it holds after
    backup_sha256 TEXT,                           -- the original bytes, in backups/
    meta_json     TEXT,                           -- the original owner, group, mode, attributes (or attribute value)
    state         TEXT    NOT NULL,               -- pending | done | skipped
    detail        TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX journal_by_path ON journal(run_id, rel_path);
