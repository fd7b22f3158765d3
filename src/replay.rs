//! What `apply` (and `diff`) replay of a plan: the planned new bytes of a resource, stored in
//! the plan or recomputed from the file with the answers the plan's resolver gave.

use crate::address::{CalAddress, Guid, Principal};
use crate::error::{Error, Result};
use crate::ical::{self, dropbox::HomeRef, RewriteOptions};
use crate::state::plan_rows;
use crate::state::State;
use crate::store::write::sha256_hex;
use std::collections::HashMap;

/// The planned bytes back, checked against their planned SHA-256.
pub fn unpack(blob: &[u8], sha256: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(blob.len() * 4);
    flate2::read::ZlibDecoder::new(blob)
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::runtime(format!(
                "state database: a planned resource is damaged: {e}"
            ))
        })?;
    if sha256_hex(&out) != sha256 {
        return Err(Error::runtime(
            "state database: a planned resource does not match its hash; plan again",
        ));
    }
    Ok(out)
}

/// One pass of a plan's resolver as stored: answers the questions the plan asked, as it did.
#[derive(Default)]
struct Replay {
    addresses: HashMap<String, Principal>,
    homes: HashMap<String, Guid>,
}

impl ical::Resolve for Replay {
    fn resolve(&self, addr: &CalAddress) -> Option<&Principal> {
        self.addresses.get(&addr.key())
    }

    fn moved_home(&self, home: &HomeRef) -> Option<Guid> {
        self.homes.get(&home.to_string()).cloned()
    }
}

/// How a planned resource's new bytes are obtained.
#[derive(Clone, Debug)]
pub enum NewBytes {
    /// Stored in the plan (zlib), as plans before state schema 10 and address-book cards keep them.
    Stored(Vec<u8>),
    /// Recomputed from the file with pass N of the plan's resolver.
    Rewrite(i64),
}

/// A plan's rewrites, to recompute a resource's new bytes from its current bytes.
pub struct PlannedRewrites {
    passes: [Replay; 2],
    opts: RewriteOptions,
}

impl PlannedRewrites {
    /// Loads plan `plan_id`'s stored resolver answers.
    pub fn load(state: &State, plan_id: i64) -> Result<PlannedRewrites> {
        let form: String = state.plan_text(plan_id, "address_form")?;
        let form =
            serde_json::from_value(serde_json::Value::String(form.clone())).map_err(|_| {
                Error::runtime(format!(
                    "state database: plan {plan_id} has an unknown address form `{form}`"
                ))
            })?;
        let mut passes: [Replay; 2] = Default::default();
        for row in plan_rows::rewrites(state, plan_id)? {
            let pass = row.pass;
            let Some(replay) = passes.get_mut(pass as usize) else {
                return Err(Error::runtime(format!(
                    "state database: plan {plan_id} has a rewrite pass {pass} this program does not know"
                )));
            };
            match row.kind {
                plan_rows::RewriteKind::Home => {
                    let value = row.value;
                    let g = Guid::from_any(&value).ok_or_else(|| {
                        Error::runtime(format!(
                            "state database: plan {plan_id}: `{value}` is not a GUID"
                        ))
                    })?;
                    replay.homes.insert(row.key, g);
                }
                plan_rows::RewriteKind::Address => {
                    replay
                        .addresses
                        .insert(row.key, serde_json::from_str(&row.value)?);
                }
            }
        }
        Ok(PlannedRewrites {
            passes,
            opts: RewriteOptions { form },
        })
    }

    /// The planned new bytes of a resource whose bytes are now `current`: the stored ones, or the
    /// plan's rewrite of `current`. The caller checks them against the planned hash.
    pub fn new_bytes(&self, how: &NewBytes, current: &[u8], new_sha: &str) -> Result<Vec<u8>> {
        match how {
            NewBytes::Stored(blob) => unpack(blob, new_sha),
            NewBytes::Rewrite(pass) => {
                let replay = self.passes.get(*pass as usize).ok_or_else(|| {
                    Error::runtime(format!("state database: unknown rewrite pass {pass}"))
                })?;
                Ok(ical::rewrite(current, replay, &self.opts)
                    .map_err(|e| Error::runtime(e.to_string()))?
                    .bytes)
            }
        }
    }
}

/// How plan `plan_id` obtains the new bytes of `rel`, and its attribute edits (JSON); `None` when
/// the plan does not change it.
pub fn planned_resource(
    state: &State,
    plan_id: i64,
    rel: &str,
) -> Result<Option<(NewBytes, Option<String>)>> {
    Ok(plan_rows::planned_row(state, plan_id, rel)?.map(|r| {
        (
            match r.rewrite_pass {
                Some(p) => NewBytes::Rewrite(p),
                None => NewBytes::Stored(r.new_bytes),
            },
            r.attr_edits,
        )
    }))
}
