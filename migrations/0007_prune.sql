-- `state prune` / keep_plans: a run whose journal and backups were dropped can no longer be
-- rolled back; a pruned plan keeps its row (runs refer to it) but none of its planned changes.
ALTER TABLE runs ADD COLUMN pruned_at TEXT;      -- RFC 3339, UTC: when its journal was dropped
