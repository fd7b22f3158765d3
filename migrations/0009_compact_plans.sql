-- Compact plans (issue #15): a plan of a file store keeps hashes and what recomputes its rewrites,
-- not the new bytes; its changed properties are kept as small rows of string ids.
--
-- A calendar resource planned from now on has `rewrite_pass` 0 (rewritten during the walk) or 1
-- (read again once the whole store was known) and an empty `new_bytes`: apply (and `diff`) rewrite
-- the file as it is with the answers that pass of the plan's resolver gave (plan_rewrites), and
-- write only bytes that hash to new_sha256. `rewrite_pass` NULL: `new_bytes` holds the bytes
-- (plans made before, address-book cards).
ALTER TABLE plan_resources ADD COLUMN rewrite_pass INTEGER;

-- What the plan's resolver answered while rewriting, per pass: an address key -> principal
-- (JSON), or a calendar home (as its URL) -> the GUID it moves to. Only answers that change
-- something are kept; a question not found here is answered "leave as written".
CREATE TABLE plan_rewrites (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    pass          INTEGER NOT NULL,
    kind          TEXT    NOT NULL,               -- address | home
    key           TEXT    NOT NULL,
    value         TEXT    NOT NULL,
    PRIMARY KEY (plan_id, pass, kind, key)
) WITHOUT ROWID;

-- Every distinct text of a plan's changes (paths, properties, old and new values), once.
CREATE TABLE plan_strings (
    id            INTEGER PRIMARY KEY,
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    text          TEXT    NOT NULL,
    UNIQUE (plan_id, text)
);

-- One row per changed property, by string id; whole lines only for the report's examples.
CREATE TABLE plan_change_rows (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    path_id       INTEGER NOT NULL,               -- plan_strings ids
    seq           INTEGER NOT NULL,               -- order of the changes within the resource
    line          INTEGER NOT NULL,
    property_id   INTEGER NOT NULL,
    old_id        INTEGER NOT NULL,
    new_id        INTEGER NOT NULL,
    old_line      TEXT    NOT NULL DEFAULT '',
    new_line      TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (plan_id, path_id, seq)
) WITHOUT ROWID;

INSERT OR IGNORE INTO plan_strings (plan_id, text)
    SELECT plan_id, rel_path FROM plan_changes UNION SELECT plan_id, property FROM plan_changes
    UNION SELECT plan_id, old_value FROM plan_changes UNION SELECT plan_id, new_value FROM plan_changes;
INSERT INTO plan_change_rows (plan_id, path_id, seq, line, property_id, old_id, new_id, old_line, new_line)
    SELECT c.plan_id,
           (SELECT id FROM plan_strings s WHERE s.plan_id = c.plan_id AND s.text = c.rel_path),
           c.rowid, c.line,
           (SELECT id FROM plan_strings s WHERE s.plan_id = c.plan_id AND s.text = c.property),
           (SELECT id FROM plan_strings s WHERE s.plan_id = c.plan_id AND s.text = c.old_value),
           (SELECT id FROM plan_strings s WHERE s.plan_id = c.plan_id AND s.text = c.new_value),
           c.old_line, c.new_line
      FROM plan_changes c;
DROP INDEX plan_changes_by_path;
DROP TABLE plan_changes;

-- The changes as every reader knows them (changes.csv, report.html, `report`, `diff`).
CREATE VIEW plan_changes (plan_id, rel_path, line, property, old_value, new_value, old_line, new_line, seq) AS
    SELECT c.plan_id, p.text, c.line, k.text, o.text, n.text, c.old_line, c.new_line, c.seq
      FROM plan_change_rows c
      JOIN plan_strings p ON p.id = c.path_id
      JOIN plan_strings k ON k.id = c.property_id
      JOIN plan_strings o ON o.id = c.old_id
      JOIN plan_strings n ON n.id = c.new_id;

-- Writers that insert or delete rows of plan_changes (address-book cards, the PostgreSQL store)
-- keep doing so; the calendar walk writes plan_change_rows itself.
CREATE TRIGGER plan_changes_insert INSTEAD OF INSERT ON plan_changes
BEGIN
    INSERT OR IGNORE INTO plan_strings (plan_id, text)
        VALUES (NEW.plan_id, NEW.rel_path), (NEW.plan_id, NEW.property),
               (NEW.plan_id, NEW.old_value), (NEW.plan_id, NEW.new_value);
    INSERT INTO plan_change_rows (plan_id, path_id, seq, line, property_id, old_id, new_id, old_line, new_line)
        SELECT NEW.plan_id, p.id,
               (SELECT COALESCE(MAX(seq), 0) + 1 FROM plan_change_rows r WHERE r.plan_id = NEW.plan_id AND r.path_id = p.id),
               NEW.line,
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.property),
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.old_value),
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.new_value),
               COALESCE(NEW.old_line, ''), COALESCE(NEW.new_line, '')
          FROM plan_strings p WHERE p.plan_id = NEW.plan_id AND p.text = NEW.rel_path;
END;

CREATE TRIGGER plan_changes_delete INSTEAD OF DELETE ON plan_changes
BEGIN
    DELETE FROM plan_change_rows
     WHERE plan_id = OLD.plan_id AND seq = OLD.seq
       AND path_id = (SELECT id FROM plan_strings WHERE plan_id = OLD.plan_id AND text = OLD.rel_path);
END;
