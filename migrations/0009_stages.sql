-- Staged migration (`apply --home`, `apply --limit`): what an apply run takes of its plan, as JSON
-- {"homes": [owner keys], "rest": bool} (src/stage.rs). NULL: the whole plan (every run before
-- stages existed, and a run of a whole plan).
ALTER TABLE runs ADD COLUMN stage_json TEXT;
