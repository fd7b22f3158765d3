-- Other places that name principals by GUID: the delegate (calendaruserproxy.sqlite) and
-- auto-accept (resourceinfo.sqlite) databases, planned like resources; and provisioning findings.

CREATE TABLE plan_databases (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    path          TEXT    NOT NULL,               -- absolute path of the database file
    kind          TEXT    NOT NULL,               -- proxy | resourceinfo
    old_sha256    TEXT    NOT NULL,
    changes       INTEGER NOT NULL,
    unmatched     INTEGER NOT NULL,
    dropped       INTEGER NOT NULL,
    plan_json     TEXT    NOT NULL,               -- the row changes, as reviewed
    PRIMARY KEY (plan_id, path)
);

ALTER TABLE plans ADD COLUMN provision_json TEXT;  -- provisioning findings when [provision] is set up
