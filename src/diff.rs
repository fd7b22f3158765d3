//! `diff RESOURCE`: one resource's planned change as a unified diff, read from the stored plan
//! and the resource as it is now.

use crate::error::{Error, Result};
use crate::state::State;
use crate::store::write::sha256_hex;
use std::path::{Path, PathBuf};

/// Where a resource stands against its plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// It still holds the bytes the plan was made from: applying changes it as shown.
    Planned,
    /// It already holds the planned bytes (the plan was applied).
    Applied,
    /// It holds other bytes: `apply` would skip it; plan again.
    ChangedSincePlan,
}

/// One resource's planned change.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ResourceDiff {
    /// The plan the change belongs to.
    pub plan_id: i64,
    /// Path relative to the store root.
    pub resource: String,
    /// Whether the resource still holds the planned-from bytes, the planned ones, or others.
    pub standing: Standing,
    /// The unified diff (3 lines of context), `a/` the planned-from bytes, `b/` the planned ones.
    pub diff: String,
}

/// The path of `resource` relative to `store`: `resource` may be whole, relative to the working
/// folder, or already relative to the store.
pub fn store_relative(store: &Path, resource: &Path) -> String {
    let store = store.canonicalize().unwrap_or_else(|_| store.to_path_buf());
    let candidates: [Option<PathBuf>; 2] = [
        Some(resource.to_path_buf()),
        std::env::current_dir().ok().map(|d| d.join(resource)),
    ];
    for c in candidates.into_iter().flatten() {
        let whole = c
            .parent()
            .and_then(|p| p.canonicalize().ok())
            .map(|p| p.join(c.file_name().unwrap_or_default()));
        if let Some(rel) = whole.as_deref().and_then(|w| w.strip_prefix(&store).ok()) {
            return rel.to_string_lossy().into_owned();
        }
    }
    resource
        .to_string_lossy()
        .trim_start_matches("./")
        .to_string()
}

/// The planned change of `resource` in plan `plan` (default: the latest).
pub fn resource_diff(
    state_dir: &Path,
    store: &Path,
    plan: Option<i64>,
    resource: &Path,
) -> Result<ResourceDiff> {
    let state = State::open_existing(state_dir)?;
    let plan_id = state.plan_or_latest(plan)?;
    let here = store_relative(store, resource);
    let lookup = |rel: &str| -> Result<Option<(String, String)>> {
        Ok(
            crate::state::report_rows::resource_hashes(&state.conn, plan_id, rel)?
                .map(|h| (h.old_sha256, h.new_sha256)),
        )
    };
    // The resource as the plan names it: where it is now, or, after its home was adopted,
    // where it was (changes.csv's resource_after_adoption names the new place).
    let mut rel = here.clone();
    let mut row = lookup(&rel)?;
    if row.is_none() {
        let moves = crate::report::home_moves(&state, plan_id)?;
        for (old, new) in &moves {
            if let Some(rest) = here
                .strip_prefix(new.as_str())
                .filter(|r| r.starts_with('/'))
            {
                let planned = format!("{old}{rest}");
                if let Some(found) = lookup(&planned)? {
                    rel = planned;
                    row = Some(found);
                    break;
                }
            }
        }
    }
    let Some((old_sha, new_sha)) = row else {
        return Err(Error::usage(format!(
            "plan {plan_id} does not change {rel} (a path relative to the store, as in changes.csv)"
        )));
    };
    let path = store.join(&here);
    let now = std::fs::read(&path).map_err(|e| Error::io("cannot read", &path, e))?;
    let now_sha = sha256_hex(&now);
    if now_sha == new_sha {
        // Applied: the file holds the planned bytes; the planned-from ones are in the backups.
        let backup = state_dir.join("backups").join(&old_sha[..2]).join(&old_sha);
        let old = std::fs::read(&backup).unwrap_or_default();
        return Ok(ResourceDiff {
            diff: unified(&rel, &old, &now),
            plan_id,
            resource: rel,
            standing: Standing::Applied,
        });
    }
    let standing = if now_sha == old_sha {
        Standing::Planned
    } else {
        Standing::ChangedSincePlan
    };
    // The planned bytes: the plan keeps hashes and replays its rewrite on the bytes it was made
    // from. For a file changed since the plan, the diff shows that rewrite of the file as it is.
    let (how, _) = crate::replay::planned_resource(&state, plan_id, &rel)?
        .ok_or_else(|| Error::runtime(format!("plan {plan_id} no longer holds {rel}")))?;
    let new =
        crate::replay::PlannedRewrites::load(&state, plan_id)?.new_bytes(&how, &now, &new_sha)?;
    Ok(ResourceDiff {
        diff: unified(&rel, &now, &new),
        plan_id,
        resource: rel,
        standing,
    })
}

/// A unified diff (three lines of context) of a resource's bytes.
fn unified(rel: &str, old: &[u8], new: &[u8]) -> String {
    let old_text = String::from_utf8_lossy(old);
    let new_text = String::from_utf8_lossy(new);
    similar::TextDiff::from_lines(old_text.as_ref(), new_text.as_ref())
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{rel}"), &format!("b/{rel}"))
        .to_string()
}
