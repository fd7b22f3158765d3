-- The PostgreSQL store (kind calendarserver-pg): what a plan changes in CalendarServer's database,
-- and the journal of the runs that change it. Plans keep hashes and edits, not texts: apply reads
-- each row again, checks it still is what was planned, and replays the planned rewrite with the
-- plan's own resolver (pg_plan_principals), checking the result against the planned hash. The old
-- rows are saved here (pg_journal.old_row) before the database is written.

CREATE TABLE pg_plans (
    plan_id        INTEGER PRIMARY KEY REFERENCES plans(id) ON DELETE CASCADE,
    schema_version INTEGER NOT NULL,
    database       TEXT    NOT NULL               -- postgresql://user@host:port/db (no password)
);

-- The resolver the plan's rewrites used: normalised address key -> principal (JSON).
CREATE TABLE pg_plan_principals (
    plan_id        INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    key            TEXT    NOT NULL,
    principal_json TEXT    NOT NULL,
    PRIMARY KEY (plan_id, key)
);

-- Calendar objects and address-book cards whose text changes.
CREATE TABLE pg_plan_objects (
    plan_id        INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    kind           TEXT    NOT NULL,              -- calendar | vcard
    resource_id    INTEGER NOT NULL,              -- CALENDAR_OBJECT / ADDRESSBOOK_OBJECT RESOURCE_ID
    label          TEXT    NOT NULL,              -- owner/collection/name, for reports
    old_text_md5   TEXT    NOT NULL,              -- md5 of the text as planned (PostgreSQL md5())
    new_text_md5   TEXT    NOT NULL,
    old_md5        TEXT    NOT NULL,              -- the MD5 (ETag) column as planned, and after
    new_md5        TEXT    NOT NULL,
    old_organizer  TEXT,                          -- the ORGANIZER column (calendar objects)
    new_organizer  TEXT,
    changes        INTEGER NOT NULL,
    PRIMARY KEY (plan_id, kind, resource_id)
);

-- Homes kept under an old uid: renamed, or merged into the home the server made for the new one.
CREATE TABLE pg_plan_homes (
    plan_id        INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    home_table     TEXT    NOT NULL,              -- CALENDAR_HOME | ADDRESSBOOK_HOME | NOTIFICATION_HOME
    resource_id    INTEGER NOT NULL,
    old_uid        TEXT    NOT NULL,
    new_uid        TEXT    NOT NULL,
    action         TEXT    NOT NULL,              -- rename | merge
    target_id      INTEGER,                       -- merge: the home that stays
    PRIMARY KEY (plan_id, home_table, resource_id)
);

-- Other uid and address columns: every row holding old_value in table.column becomes new_value.
CREATE TABLE pg_plan_values (
    plan_id        INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    table_name     TEXT    NOT NULL,
    column_name    TEXT    NOT NULL,
    old_value      TEXT    NOT NULL,
    new_value      TEXT    NOT NULL,
    rows           INTEGER NOT NULL,              -- rows seen when planning
    PRIMARY KEY (plan_id, table_name, column_name, old_value)
);

-- The journal of apply and rollback runs (rows of `runs`) on a database: one step per row edit,
-- recorded with the old row before the database transaction that makes it, marked after.
CREATE TABLE pg_journal (
    run_id         INTEGER NOT NULL REFERENCES runs(id),
    seq            INTEGER NOT NULL,
    kind           TEXT    NOT NULL,              -- object | row | undo
    table_name     TEXT    NOT NULL,
    key            TEXT    NOT NULL,              -- object: RESOURCE_ID; row: the row as JSON before
    label          TEXT    NOT NULL DEFAULT '',
    before_hash    TEXT    NOT NULL DEFAULT '',   -- object: md5 of the text before and after
    after_hash     TEXT    NOT NULL DEFAULT '',
    old_row        BLOB,                          -- object: zlib JSON of the old columns; row: JSON after
    undoes_seq     INTEGER,
    state          TEXT    NOT NULL,              -- pending | done | skipped
    detail         TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX pg_journal_by_key ON pg_journal(run_id, kind, table_name, key);
