//! One thing found wrong with one store entry: the shape every check shares (the store walk,
//! `plan`, `verify` and `doctor`), with what `doctor --fix` did about it, if anything.

use serde::{Deserialize, Serialize};

/// A problem found at one path (unreadable or malformed resource, symlink, wrong owner, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Store-relative path of the entry (or `path:line`, or a database row's label).
    pub path: String,
    /// Short machine-readable kind: `unreadable`, `malformed`, `symlink`, `not-canonical`, ...
    pub kind: String,
    /// What went wrong, in words (e.g. the parse error).
    pub detail: String,
    /// What `doctor --fix` did about it; None when nothing was fixed (left out of JSON then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
}

impl Finding {
    /// A finding of `kind` at `path`, nothing fixed.
    pub fn new(
        path: impl Into<String>,
        kind: impl Into<String>,
        detail: impl Into<String>,
    ) -> Finding {
        Finding {
            path: path.into(),
            kind: kind.into(),
            detail: detail.into(),
            fixed: None,
        }
    }

    /// A resource its parser rejected (kind `malformed`, detail the parse error, e.g. `line N: reason`).
    pub fn malformed(path: impl Into<String>, err: &dyn std::fmt::Display) -> Finding {
        Finding::new(path, "malformed", err.to_string())
    }

    /// An entry that could not be read (kind `unreadable`).
    pub fn unreadable(path: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding::new(path, "unreadable", detail)
    }

    /// A symlink the walk did not follow (kind `symlink`).
    pub fn symlink(path: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding::new(path, "symlink", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_is_left_out_of_json_when_none() {
        let f = Finding::malformed("a/b.ics", &"line 3: no END");
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"path":"a/b.ics","kind":"malformed","detail":"line 3: no END"}"#
        );
        let back: Finding =
            serde_json::from_str(r#"{"path":"p","kind":"k","detail":"d"}"#).unwrap();
        assert_eq!(back, Finding::new("p", "k", "d"));
        let fixed = Finding {
            fixed: Some("chown".into()),
            ..Finding::new("p", "owner", "d")
        };
        assert_eq!(
            serde_json::to_string(&fixed).unwrap(),
            r#"{"path":"p","kind":"owner","detail":"d","fixed":"chown"}"#
        );
    }
}
