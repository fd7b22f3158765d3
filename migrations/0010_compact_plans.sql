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

-- Every distinct text of a plan's changes (properties, old and new values), once; and the paths of
-- changes that have no plan_resources row (the PostgreSQL store's objects).
CREATE TABLE plan_strings (
    id            INTEGER PRIMARY KEY,
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    text          TEXT    NOT NULL,
    UNIQUE (plan_id, text)
);

-- One row per changed property, by ids; whole lines only for the report's examples.
CREATE TABLE plan_change_rows (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    res_id        INTEGER NOT NULL,               -- plan_resources rowid, or 0
    path_id       INTEGER NOT NULL,               -- else the path's plan_strings id (0 with res_id)
    seq           INTEGER NOT NULL,               -- order of the changes within the resource
    line          INTEGER NOT NULL,
    property_id   INTEGER NOT NULL,               -- plan_strings ids
    old_id        INTEGER NOT NULL,
    new_id        INTEGER NOT NULL,
    old_line      TEXT    NOT NULL DEFAULT '',
    new_line      TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (plan_id, res_id, path_id, seq)
) WITHOUT ROWID;

INSERT OR IGNORE INTO plan_strings (plan_id, text)
    SELECT plan_id, property FROM plan_changes UNION SELECT plan_id, old_value FROM plan_changes
    UNION SELECT plan_id, new_value FROM plan_changes
    UNION SELECT c.plan_id, c.rel_path FROM plan_changes c
     WHERE NOT EXISTS (SELECT 1 FROM plan_resources r WHERE r.plan_id = c.plan_id AND r.rel_path = c.rel_path);
INSERT INTO plan_change_rows (plan_id, res_id, path_id, seq, line, property_id, old_id, new_id, old_line, new_line)
    SELECT y.plan_id, y.res,
           CASE WHEN y.res = 0 THEN (SELECT id FROM plan_strings s WHERE s.plan_id = y.plan_id AND s.text = y.rel_path) ELSE 0 END,
           y.rid, y.line,
           (SELECT id FROM plan_strings s WHERE s.plan_id = y.plan_id AND s.text = y.property),
           (SELECT id FROM plan_strings s WHERE s.plan_id = y.plan_id AND s.text = y.old_value),
           (SELECT id FROM plan_strings s WHERE s.plan_id = y.plan_id AND s.text = y.new_value),
           y.old_line, y.new_line
      FROM (SELECT c.*, c.rowid AS rid,
                   COALESCE((SELECT r.rowid FROM plan_resources r WHERE r.plan_id = c.plan_id AND r.rel_path = c.rel_path), 0) AS res
              FROM plan_changes c) y;
DROP INDEX plan_changes_by_path;
DROP TABLE plan_changes;

-- The changes as every reader knows them (changes.csv, report.html, `report`, `diff`).
CREATE VIEW plan_changes (plan_id, rel_path, line, property, old_value, new_value, old_line, new_line, seq, res_id, path_id) AS
    SELECT c.plan_id, r.rel_path, c.line, k.text, o.text, n.text, c.old_line, c.new_line, c.seq, c.res_id, c.path_id
      FROM plan_change_rows c
      JOIN plan_resources r ON r.rowid = c.res_id
      JOIN plan_strings k ON k.id = c.property_id
      JOIN plan_strings o ON o.id = c.old_id
      JOIN plan_strings n ON n.id = c.new_id
     WHERE c.res_id != 0
    UNION ALL
    SELECT c.plan_id, p.text, c.line, k.text, o.text, n.text, c.old_line, c.new_line, c.seq, c.res_id, c.path_id
      FROM plan_change_rows c
      JOIN plan_strings p ON p.id = c.path_id
      JOIN plan_strings k ON k.id = c.property_id
      JOIN plan_strings o ON o.id = c.old_id
      JOIN plan_strings n ON n.id = c.new_id
     WHERE c.res_id = 0;

-- Writers that insert or delete rows of plan_changes (address-book cards, the PostgreSQL store)
-- keep doing so; the calendar walk writes plan_change_rows itself.
CREATE TRIGGER plan_changes_insert INSTEAD OF INSERT ON plan_changes
BEGIN
    INSERT OR IGNORE INTO plan_strings (plan_id, text)
        SELECT NEW.plan_id, NEW.rel_path
         WHERE NOT EXISTS (SELECT 1 FROM plan_resources WHERE plan_id = NEW.plan_id AND rel_path = NEW.rel_path);
    INSERT OR IGNORE INTO plan_strings (plan_id, text)
        VALUES (NEW.plan_id, NEW.property), (NEW.plan_id, NEW.old_value), (NEW.plan_id, NEW.new_value);
    INSERT INTO plan_change_rows (plan_id, res_id, path_id, seq, line, property_id, old_id, new_id, old_line, new_line)
        SELECT NEW.plan_id, x.res, x.path,
               (SELECT COALESCE(MAX(seq), 0) + 1 FROM plan_change_rows r
                 WHERE r.plan_id = NEW.plan_id AND r.res_id = x.res AND r.path_id = x.path),
               NEW.line,
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.property),
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.old_value),
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.new_value),
               COALESCE(NEW.old_line, ''), COALESCE(NEW.new_line, '')
          FROM (SELECT y.res,
                       CASE WHEN y.res = 0
                            THEN (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.rel_path)
                            ELSE 0 END AS path
                  FROM (SELECT COALESCE((SELECT rowid FROM plan_resources
                                          WHERE plan_id = NEW.plan_id AND rel_path = NEW.rel_path), 0) AS res) y) x;
END;

CREATE TRIGGER plan_changes_delete INSTEAD OF DELETE ON plan_changes
BEGIN
    DELETE FROM plan_change_rows
     WHERE plan_id = OLD.plan_id AND res_id = OLD.res_id AND path_id = OLD.path_id AND seq = OLD.seq;
END;
