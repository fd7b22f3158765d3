-- State database of principal-reconciler: plans (what would change) and their reports' data.
-- Applied in order by src/state.rs; each file runs once, recorded in schema_migrations.

CREATE TABLE plans (
    id            INTEGER PRIMARY KEY,
    created_at    TEXT    NOT NULL,               -- RFC 3339, UTC
    store_kind    TEXT    NOT NULL,
    store_path    TEXT    NOT NULL,               -- absolute path of the store that was planned
    address_form  TEXT    NOT NULL,
    directory     TEXT    NOT NULL,               -- origin of the current directory records
    summary_json  TEXT    NOT NULL DEFAULT '{}'   -- counts shown in reports
);

-- One row per distinct address or GUID found in the store: how it was resolved.
CREATE TABLE plan_mappings (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    old_value     TEXT    NOT NULL,               -- normalised key of the address
    form          TEXT    NOT NULL,               -- mailto | urn:uuid | urn:x-uid | principal-uid | principal-name | other
    outcome       TEXT    NOT NULL,               -- unchanged | mapped | ambiguous | unmatched | external
    rule          TEXT    NOT NULL,               -- which rule decided (override, same-guid, old-export-guid, ...)
    evidence      TEXT    NOT NULL,
    new_guid      TEXT,
    new_short     TEXT,
    new_full_name TEXT,
    record_type   TEXT,
    new_value     TEXT,                           -- canonical address written for it
    resources     INTEGER NOT NULL,               -- resources that mention it
    candidates    TEXT    NOT NULL DEFAULT '',    -- ambiguous: "GUID (short)" list
    PRIMARY KEY (plan_id, old_value)
);

-- One row per resource the plan changes, with the exact new bytes.
CREATE TABLE plan_resources (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    rel_path      TEXT    NOT NULL,
    old_sha256    TEXT    NOT NULL,
    new_sha256    TEXT    NOT NULL,
    new_bytes     BLOB    NOT NULL,               -- zlib-compressed exact new bytes
    changes       INTEGER NOT NULL,
    PRIMARY KEY (plan_id, rel_path)
);

-- One row per changed property.
CREATE TABLE plan_changes (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    rel_path      TEXT    NOT NULL,
    line          INTEGER NOT NULL,
    property      TEXT    NOT NULL,
    old_value     TEXT    NOT NULL,
    new_value     TEXT    NOT NULL,
    old_line      TEXT    NOT NULL,               -- whole logical lines: kept for the first
    new_line      TEXT    NOT NULL                -- changed resources only (report diffs), else ''
);
CREATE INDEX plan_changes_by_path ON plan_changes(plan_id, rel_path);

-- Calendar homes and what the plan found about their owner.
CREATE TABLE plan_homes (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    rel_path      TEXT    NOT NULL,
    layout        TEXT    NOT NULL,
    old_id        TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,               -- current | moved | unmatched | ambiguous
    new_guid      TEXT,
    PRIMARY KEY (plan_id, rel_path)
);

-- Resources that could not be read or are not calendar objects, and other findings.
CREATE TABLE plan_problems (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    path          TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    detail        TEXT    NOT NULL
);
