-- Run lifecycle and plan status, stored explicitly (src/state.rs has the enums and their strings).
--
-- A plan is `building` until its reports are written, then `complete`; a plan whose command failed
-- after storing it is `failed` (with the reason) and can never be applied.
-- An apply (or provision) run goes applying -> applied -> rolling-back -> rolled-back; a rollback
-- run's own `state` stays NULL (its `status` says whether it finished). `status` is the process
-- side: running (a crash leaves it so), interrupted (stopped by a signal after a whole batch), done.

ALTER TABLE plans ADD COLUMN status TEXT NOT NULL DEFAULT 'complete';   -- building | complete | failed
ALTER TABLE plans ADD COLUMN status_detail TEXT NOT NULL DEFAULT '';

ALTER TABLE runs ADD COLUMN state TEXT;          -- apply/provision runs: applying | applied | rolling-back | rolled-back
ALTER TABLE runs ADD COLUMN stopped_by TEXT;     -- the signal that interrupted it (SIGINT, SIGTERM)

-- Existing rows: a finished apply is applied, an unfinished one applying; one that a rollback run
-- undoes is rolled back (or rolling back while that rollback is unfinished).
UPDATE runs SET state = CASE status WHEN 'done' THEN 'applied' ELSE 'applying' END
 WHERE kind IN ('apply', 'provision');
UPDATE runs SET state = (
        SELECT CASE r.status WHEN 'done' THEN 'rolled-back' ELSE 'rolling-back' END
          FROM runs r WHERE r.kind = 'rollback' AND r.undoes_run = runs.id
         ORDER BY r.id DESC LIMIT 1)
 WHERE kind IN ('apply', 'provision')
   AND EXISTS (SELECT 1 FROM runs r WHERE r.kind = 'rollback' AND r.undoes_run = runs.id);

-- Rollback looks up, for every step it undoes, the step of its own run that did it.
CREATE INDEX journal_by_undone ON journal(run_id, undoes_seq);
CREATE INDEX runs_by_plan ON runs(plan_id, kind);
