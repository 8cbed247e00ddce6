//! `ctl edit-config`: the cluster-wide configuration as a file for `$EDITOR`, read back,
//! compared, and applied as one `SetConfigs` commit. Pure parts here, tested alone.

use std::collections::BTreeMap;

use anyhow::bail;

/// The file the editor opens: a header, then `key = value` lines, sorted.
pub fn render(pairs: &BTreeMap<String, String>) -> String {
    let mut out = String::from(
        "# raftpg cluster-wide configuration. Edit values, add `key = value` lines\n\
         # (HA keys, or postgresql.parameters.NAME), or delete a line to reset that key.\n\
         # Saved unchanged or emptied: nothing is applied. Lines starting with # are ignored.\n",
    );
    for (k, v) in pairs {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

/// Reads the edited file back: one `key = value` per line; errors name the line.
pub fn parse(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("line {}: '{line}' is not key = value", n + 1);
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            bail!("line {}: the key is empty", n + 1);
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            bail!("line {}: {k} is set twice", n + 1);
        }
    }
    Ok(out)
}

/// One changed key: its value before and after (`None`: absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// What differs between the configuration read and the one edited. A deleted key, or
/// one emptied, is reset (`after: None`).
pub fn diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<Change> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let b = before.get(k).cloned();
            let a = after.get(k).filter(|v| !v.is_empty()).cloned();
            (b != a).then(|| Change {
                key: k.clone(),
                before: b,
                after: a,
            })
        })
        .collect()
}

/// The diff as people read it: `-key = old` and `+key = new` lines.
pub fn show(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes {
        if let Some(b) = &c.before {
            out.push_str(&format!("-{} = {b}\n", c.key));
        }
        match &c.after {
            Some(a) => out.push_str(&format!("+{} = {a}\n", c.key)),
            None => out.push_str(&format!("+{} (reset)\n", c.key)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_rendered_file_reads_back_as_it_was() {
        let m = map(&[("lease_ms", "2000"), ("postgresql.parameters.work_mem", "8MB")]);
        assert_eq!(parse(&render(&m)).unwrap(), m);
        assert!(diff(&m, &parse(&render(&m)).unwrap()).is_empty());
    }

    #[test]
    fn edits_additions_and_deletions_become_changes() {
        let before = map(&[
            ("lease_ms", "2000"),
            ("ttl", "30"),
            ("postgresql.parameters.work_mem", "8MB"),
        ]);
        let after = parse("lease_ms = 3000\n# ttl deleted\npostgresql.parameters.work_mem =\npostgresql.parameters.max_connections = 200\n").unwrap();
        let changes = diff(&before, &after);
        assert_eq!(
            changes,
            [
                Change {
                    key: "lease_ms".into(),
                    before: Some("2000".into()),
                    after: Some("3000".into())
                },
                Change {
                    key: "postgresql.parameters.max_connections".into(),
                    before: None,
                    after: Some("200".into())
                },
                Change {
                    key: "postgresql.parameters.work_mem".into(),
                    before: Some("8MB".into()),
                    after: None
                },
                Change {
                    key: "ttl".into(),
                    before: Some("30".into()),
                    after: None
                },
            ]
        );
        let text = show(&changes);
        assert!(text.contains("-lease_ms = 2000\n+lease_ms = 3000\n"), "{text}");
        assert!(text.contains("+ttl (reset)"), "{text}");
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = parse("lease_ms = 1\nnonsense\n").unwrap_err().to_string();
        assert_eq!(e, "line 2: 'nonsense' is not key = value");
        let e = parse("a = 1\na = 2\n").unwrap_err().to_string();
        assert_eq!(e, "line 2: a is set twice");
    }
}
