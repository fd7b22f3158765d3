-- Packed plans (issue #15): one `plan_items` row per changed resource, smaller than a
-- plan_resources row and its plan_change_rows: the SHA-256 values as 32-byte BLOBs instead of
-- hex, the path as (folder id -> plan_folders, file name) instead of the whole path, and the
-- changed properties packed into the row: a JSON array [line, pair, line, pair, ...] where a pair
-- (property, old value, new value) is a plan_pairs row of plan_strings ids. JSON, not a binary
-- varint list, so that SQLite's own json_each unpacks it and every reader of the views below
-- (the reports, `diff`, the tests' plain connections) keeps working without a Rust function.
--
-- `plan_resources` and `plan_changes` become views of the new tables, column for column, so the
-- plans made before (moved here by this migration) and the new ones read the same.

-- The folders of a plan's resources, each once: `path` ends with '/' ('' for the root).
CREATE TABLE plan_folders (
    id            INTEGER PRIMARY KEY,
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    path          TEXT    NOT NULL,
    UNIQUE (plan_id, path)
);

-- A changed property's (property, old value, new value), by plan_strings ids, each once a plan.
CREATE TABLE plan_pairs (
    id            INTEGER PRIMARY KEY,
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    property_id   INTEGER NOT NULL,
    old_id        INTEGER NOT NULL,
    new_id        INTEGER NOT NULL,
    UNIQUE (plan_id, property_id, old_id, new_id)
);

-- One row per resource the plan changes.
CREATE TABLE plan_items (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    folder_id     INTEGER NOT NULL,               -- plan_folders id
    name          TEXT    NOT NULL,               -- file name in the folder
    old_sha       BLOB    NOT NULL,               -- SHA-256, 32 bytes (text if it was no hex)
    new_sha       BLOB    NOT NULL,
    changes       INTEGER NOT NULL,
    rewrite_pass  INTEGER,                        -- see 0010; NULL: new_bytes holds the bytes
    attr_edits    TEXT,
    new_bytes     BLOB,                           -- zlib; NULL when recomputed at apply
    packed        TEXT,                           -- [line, pair, ...]; NULL: plan_item_changes
    PRIMARY KEY (plan_id, folder_id, name)
) WITHOUT ROWID;

-- Changes kept whole, with their lines: the report's example resources, and plans made before.
CREATE TABLE plan_item_changes (
    plan_id       INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    folder_id     INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    line          INTEGER NOT NULL,
    property_id   INTEGER NOT NULL,
    old_id        INTEGER NOT NULL,
    new_id        INTEGER NOT NULL,
    old_line      TEXT    NOT NULL DEFAULT '',
    new_line      TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (plan_id, folder_id, name, seq)
) WITHOUT ROWID;

-- The plans made before, moved (a hash that is no hex stays as it was, as text).
INSERT OR IGNORE INTO plan_folders (plan_id, path)
    SELECT DISTINCT plan_id, rtrim(rel_path, replace(rel_path, '/', '')) FROM plan_resources;
CREATE TEMP TABLE moved_resources AS
    SELECT r.rowid AS res_id, r.*, f.id AS folder_id, substr(r.rel_path, length(f.path) + 1) AS name
      FROM plan_resources r
      JOIN plan_folders f ON f.plan_id = r.plan_id AND f.path = rtrim(r.rel_path, replace(r.rel_path, '/', ''));
INSERT INTO plan_items (plan_id, folder_id, name, old_sha, new_sha, changes, rewrite_pass, attr_edits, new_bytes, packed)
    SELECT plan_id, folder_id, name,
           COALESCE(unhex(old_sha256), old_sha256), COALESCE(unhex(new_sha256), new_sha256),
           changes, rewrite_pass, attr_edits,
           CASE WHEN rewrite_pass IS NULL THEN new_bytes END, NULL
      FROM moved_resources;
INSERT INTO plan_item_changes (plan_id, folder_id, name, seq, line, property_id, old_id, new_id, old_line, new_line)
    SELECT c.plan_id, m.folder_id, m.name, c.seq, c.line, c.property_id, c.old_id, c.new_id, c.old_line, c.new_line
      FROM plan_change_rows c JOIN moved_resources m ON m.res_id = c.res_id
     WHERE c.res_id != 0;
DELETE FROM plan_change_rows WHERE res_id != 0;
DROP TABLE moved_resources;

DROP TRIGGER plan_changes_insert;
DROP TRIGGER plan_changes_delete;
DROP VIEW plan_changes;
DROP TABLE plan_resources;

-- A hash as every reader knows it: lower-case hex.
CREATE VIEW plan_resources (plan_id, rel_path, old_sha256, new_sha256, new_bytes, changes, attr_edits, rewrite_pass, folder_id, name) AS
    SELECT i.plan_id, f.path || i.name,
           CASE WHEN typeof(i.old_sha) = 'blob' THEN lower(hex(i.old_sha)) ELSE i.old_sha END,
           CASE WHEN typeof(i.new_sha) = 'blob' THEN lower(hex(i.new_sha)) ELSE i.new_sha END,
           COALESCE(i.new_bytes, X''), i.changes, i.attr_edits, i.rewrite_pass, i.folder_id, i.name
      FROM plan_items i JOIN plan_folders f ON f.id = i.folder_id;

-- The changes as every reader knows them (changes.csv, report.html, `report`, `diff`): packed
-- ones, whole ones, and those of paths that have no item (the PostgreSQL store's objects).
CREATE VIEW plan_changes (plan_id, rel_path, line, property, old_value, new_value, old_line, new_line, seq, res_id, path_id, folder_id, name) AS
    SELECT i.plan_id, f.path || i.name, j.value, k.text, o.text, n.text, '', '', j.key / 2 + 1, 0, 0, i.folder_id, i.name
      FROM plan_items i
      JOIN plan_folders f ON f.id = i.folder_id
      JOIN json_each(i.packed) j
      JOIN plan_pairs p ON p.id = i.packed ->> (j.key + 1)
      JOIN plan_strings k ON k.id = p.property_id
      JOIN plan_strings o ON o.id = p.old_id
      JOIN plan_strings n ON n.id = p.new_id
     WHERE i.packed IS NOT NULL AND j.key % 2 = 0
    UNION ALL
    SELECT c.plan_id, f.path || c.name, c.line, k.text, o.text, n.text, c.old_line, c.new_line, c.seq, 0, 0, c.folder_id, c.name
      FROM plan_item_changes c
      JOIN plan_folders f ON f.id = c.folder_id
      JOIN plan_strings k ON k.id = c.property_id
      JOIN plan_strings o ON o.id = c.old_id
      JOIN plan_strings n ON n.id = c.new_id
    UNION ALL
    SELECT c.plan_id, p.text, c.line, k.text, o.text, n.text, c.old_line, c.new_line, c.seq, c.res_id, c.path_id, 0, ''
      FROM plan_change_rows c
      JOIN plan_strings p ON p.id = c.path_id
      JOIN plan_strings k ON k.id = c.property_id
      JOIN plan_strings o ON o.id = c.old_id
      JOIN plan_strings n ON n.id = c.new_id
     WHERE c.res_id = 0;

-- Writers that insert or delete rows of plan_changes (the PostgreSQL store) keep doing so: a
-- change of a planned item is kept whole (plan_item_changes), any other by its path. Packed
-- changes go with their item only.
CREATE TRIGGER plan_changes_insert INSTEAD OF INSERT ON plan_changes
BEGIN
    INSERT OR IGNORE INTO plan_strings (plan_id, text)
        VALUES (NEW.plan_id, NEW.property), (NEW.plan_id, NEW.old_value), (NEW.plan_id, NEW.new_value);
    INSERT INTO plan_item_changes (plan_id, folder_id, name, seq, line, property_id, old_id, new_id, old_line, new_line)
        SELECT NEW.plan_id, i.folder_id, i.name,
               (SELECT COALESCE(MAX(seq), 0) + 1 FROM plan_item_changes x
                 WHERE x.plan_id = NEW.plan_id AND x.folder_id = i.folder_id AND x.name = i.name)
                 + COALESCE(json_array_length(i.packed) / 2, 0),
               NEW.line,
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.property),
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.old_value),
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.new_value),
               COALESCE(NEW.old_line, ''), COALESCE(NEW.new_line, '')
          FROM plan_folders f JOIN plan_items i ON i.plan_id = f.plan_id AND i.folder_id = f.id
         WHERE f.plan_id = NEW.plan_id
           AND f.path = rtrim(NEW.rel_path, replace(NEW.rel_path, '/', ''))
           AND i.name = substr(NEW.rel_path, length(f.path) + 1);
    INSERT OR IGNORE INTO plan_strings (plan_id, text)
        SELECT NEW.plan_id, NEW.rel_path
         WHERE NOT EXISTS (SELECT 1 FROM plan_folders f JOIN plan_items i ON i.plan_id = f.plan_id AND i.folder_id = f.id
                            WHERE f.plan_id = NEW.plan_id
                              AND f.path = rtrim(NEW.rel_path, replace(NEW.rel_path, '/', ''))
                              AND i.name = substr(NEW.rel_path, length(f.path) + 1));
    INSERT INTO plan_change_rows (plan_id, res_id, path_id, seq, line, property_id, old_id, new_id, old_line, new_line)
        SELECT NEW.plan_id, 0, x.path,
               (SELECT COALESCE(MAX(seq), 0) + 1 FROM plan_change_rows r
                 WHERE r.plan_id = NEW.plan_id AND r.res_id = 0 AND r.path_id = x.path),
               NEW.line,
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.property),
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.old_value),
               (SELECT id FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.new_value),
               COALESCE(NEW.old_line, ''), COALESCE(NEW.new_line, '')
          FROM (SELECT id AS path FROM plan_strings WHERE plan_id = NEW.plan_id AND text = NEW.rel_path) x
         WHERE NOT EXISTS (SELECT 1 FROM plan_folders f JOIN plan_items i ON i.plan_id = f.plan_id AND i.folder_id = f.id
                            WHERE f.plan_id = NEW.plan_id
                              AND f.path = rtrim(NEW.rel_path, replace(NEW.rel_path, '/', ''))
                              AND i.name = substr(NEW.rel_path, length(f.path) + 1));
END;

CREATE TRIGGER plan_changes_delete INSTEAD OF DELETE ON plan_changes
BEGIN
    DELETE FROM plan_change_rows
     WHERE OLD.path_id != 0 AND plan_id = OLD.plan_id AND res_id = 0 AND path_id = OLD.path_id AND seq = OLD.seq;
    DELETE FROM plan_item_changes
     WHERE OLD.folder_id != 0 AND plan_id = OLD.plan_id AND folder_id = OLD.folder_id AND name = OLD.name AND seq = OLD.seq;
END;
