-- Address books (10.6 Address Book Server, or addressbooks/ beside calendars/ from 3.x): their
-- homes are planned like calendar homes, their group cards like resources (plan_resources rows
-- whose rel_path begins with addressbooks/, relative to the address-book root).

-- The address-book root a plan read, and the one a run wrote (a rehearsal writes a copy).
ALTER TABLE plans ADD COLUMN addressbook_path TEXT;
ALTER TABLE runs ADD COLUMN addressbook_path TEXT;

-- Address-book homes and what the plan found about their owner.
CREATE TABLE plan_addressbook_homes (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    rel_path      TEXT    NOT NULL,               -- relative to the address-book root
    layout        TEXT    NOT NULL,
    old_id        TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,               -- current | moved | unmatched | ambiguous
    new_guid      TEXT,
    PRIMARY KEY (plan_id, rel_path)
);
