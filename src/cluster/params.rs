//! Which PostgreSQL parameters the replicated state may carry, and which member names it
//! accepts: the sandbox of `config set` and `AddMember` (issue 12).
//!
//! A cluster-wide parameter reaches every node's `postgresql.conf` through Raft, from anyone
//! who may commit a command. So it must not be able to run a command, load code, name a file
//! or override what raftpg manages: those are set only in a node's own `raftpg.toml`
//! (`[postgres.parameters]`), which needs access to that host anyway. PostgreSQL compares
//! parameter names case-insensitively, and so does this module.

/// Parameters raftpg sets itself; neither node nor cluster config may override them.
pub const MANAGED: [&str; 8] = [
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "hba_file",
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "recovery_target_timeline",
];

/// Bounds on what the replicated state carries.
pub const MAX_PARAMETERS: usize = 200;
pub const MAX_VALUE_BYTES: usize = 4096;
/// PostgreSQL truncates identifiers (a member name is an `application_name`) to 63 bytes.
pub const MAX_NAME_BYTES: usize = 63;

/// Why a parameter cannot be set for the whole cluster, if it cannot. `name` in lower case.
fn refused(name: &str) -> Option<&'static str> {
    let runs_commands = name.ends_with("_command");
    let loads_code = name.ends_with("_preload_libraries")
        || matches!(name, "dynamic_library_path" | "archive_library" | "jit_provider");
    let names_files = name.starts_with("include")
        || name.ends_with("_file")
        || name.ends_with("_keyfile")
        || name.ends_with("_directory")
        || name.ends_with("_dir")
        || matches!(name, "config_file" | "data_directory");
    if runs_commands {
        Some("it runs a shell command as the postgres OS user")
    } else if loads_code {
        Some("it loads code into PostgreSQL")
    } else if names_files {
        Some("it names a file or directory on the host")
    } else if name.starts_with("recovery_target") {
        Some("a recovery target would make a standby stop or promote on its own; raftpg decides that")
    } else {
        None
    }
}

/// A cluster-wide parameter `name = value`, checked: its name in lower case (as PostgreSQL
/// reads it), or why it is refused, with where it can be set instead.
pub fn check_parameter(name: &str, value: Option<&str>) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    let valid = !lower.is_empty()
        && lower.len() <= MAX_NAME_BYTES
        && lower.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid {
        return Err(format!(
            "'{name}' is not a PostgreSQL parameter name (letters, digits, '_' and '.', at most {MAX_NAME_BYTES})"
        ));
    }
    let Some(v) = value else {
        // A reset is always allowed: it may remove what an older raftpg accepted.
        return Ok(lower);
    };
    if MANAGED.contains(&lower.as_str()) {
        return Err(format!(
            "{lower} cannot be set: raftpg sets it itself on every node, from the members and the state"
        ));
    }
    if let Some(why) = refused(&lower) {
        return Err(format!(
            "{lower} cannot be set for the whole cluster: {why}. Set it in [postgres.parameters] of each node's \
             raftpg.toml, which needs access to that host"
        ));
    }
    if v.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value of {lower} is {} bytes long: at most {MAX_VALUE_BYTES} are accepted",
            v.len()
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(format!(
            "the value of {lower} holds a control character (a newline?): postgresql.conf could not be read"
        ));
    }
    if lower == "synchronous_commit" && !matches!(v.to_ascii_lowercase().as_str(), "on" | "remote_apply") {
        return Err(format!(
            "synchronous_commit = {v} would acknowledge commits before a quorum of standbys has flushed them, and a \
             failover could lose them: only on and remote_apply are accepted (clients may still lower it per session)"
        ));
    }
    Ok(lower)
}

/// Why `name` (checked, in lower case) is not a parameter of the PostgreSQL whose
/// `pg_settings` names are `known`, if it is not: with the closest known name when one is
/// near enough to be a typo. A name with a dot is an extension's, which PostgreSQL accepts
/// before the extension is loaded, so it is never refused here.
pub fn unknown_parameter(name: &str, known: &[String]) -> Option<String> {
    if name.contains('.') || known.iter().any(|k| k.eq_ignore_ascii_case(name)) {
        return None;
    }
    let near = known
        .iter()
        .map(|k| (edit_distance(name, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 5))
        .min();
    Some(match near {
        Some((_, k)) => format!("PostgreSQL has no parameter {name}: did you mean {k}?"),
        None => format!("PostgreSQL has no parameter {name} (see `SELECT name FROM pg_settings`)"),
    })
}

/// Levenshtein distance, over bytes (parameter names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Whether a node's own parameter (`raftpg.toml`) may be written: anything raftpg does not
/// manage, compared as PostgreSQL compares names.
pub fn is_managed(name: &str) -> bool {
    MANAGED.contains(&name.to_ascii_lowercase().as_str())
}

/// A member name: letters, digits, '-' and '_', at most 63 bytes. It becomes PostgreSQL's
/// `application_name`, a replication slot, a quoted name in `synchronous_standby_names` and
/// part of file names, so nothing else is accepted, from the config file or from `AddMember`.
pub fn check_member_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a valid member name: use letters, digits, '-' or '_', at most {MAX_NAME_BYTES}",
            name.escape_debug()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_parameter_is_named_with_the_closest_known_one() {
        let known: Vec<String> = [
            "work_mem",
            "maintenance_work_mem",
            "shared_buffers",
            "wal_level",
            "DateStyle",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(unknown_parameter("work_mem", &known), None);
        assert_eq!(
            unknown_parameter("datestyle", &known),
            None,
            "names compare case-insensitively"
        );
        assert_eq!(
            unknown_parameter("pg_stat_statements.max", &known),
            None,
            "an extension's"
        );
        let e = unknown_parameter("wrok_mem", &known).unwrap();
        assert!(e.contains("did you mean work_mem?"), "{e}");
        let e = unknown_parameter("shared_buffer", &known).unwrap();
        assert!(e.contains("did you mean shared_buffers?"), "{e}");
        let e = unknown_parameter("no_such_setting", &known).unwrap();
        assert!(
            e.contains("no parameter no_such_setting") && !e.contains("did you mean"),
            "{e}"
        );
        assert_eq!(
            unknown_parameter("x", &[]).map(|e| e.contains("pg_settings")),
            Some(true)
        );
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        for (a, b, d) in [
            ("", "", 0),
            ("", "abc", 3),
            ("abc", "", 3),
            ("work_mem", "work_mem", 0),
            ("wrok_mem", "work_mem", 2),
            ("work_me", "work_mem", 1),
            ("work_mem", "work_meme", 1),
            ("kitten", "sitting", 3),
        ] {
            assert_eq!(edit_distance(a, b), d, "{a} -> {b}");
            assert_eq!(edit_distance(b, a), d, "{b} -> {a}");
        }
    }

    #[test]
    fn parameters_that_run_load_or_name_files_are_refused_whatever_their_case() {
        for name in ["SYNCHRONOUS_STANDBY_NAMES", "Primary_Conninfo", "port", "HBA_FILE"] {
            let e = check_parameter(name, Some("x")).expect_err(name);
            assert!(e.contains("raftpg sets it itself"), "{name}: {e}");
        }
        for name in [
            "archive_command",
            "ARCHIVE_COMMAND",
            "Restore_Command",
            "archive_cleanup_command",
            "recovery_end_command",
            "ssl_passphrase_command",
            "shared_preload_libraries",
            "session_preload_libraries",
            "local_preload_libraries",
            "dynamic_library_path",
            "archive_library",
            "jit_provider",
            "include",
            "include_dir",
            "include_if_exists",
            "ident_file",
            "ssl_key_file",
            "krb_server_keyfile",
            "data_directory",
            "log_directory",
            "ssl_crl_dir",
            "config_file",
            "recovery_target_action",
            "recovery_target_lsn",
        ] {
            let e = check_parameter(name, Some("x")).expect_err(name);
            assert!(e.contains("raftpg.toml"), "{name}: {e}");
        }
    }

    #[test]
    fn ordinary_parameters_are_kept_in_lower_case_and_bounded() {
        assert_eq!(check_parameter("Work_Mem", Some("8MB")).unwrap(), "work_mem");
        assert_eq!(
            check_parameter("pg_stat_statements.max", None).unwrap(),
            "pg_stat_statements.max"
        );
        assert_eq!(
            check_parameter("ARCHIVE_command", None).unwrap(),
            "archive_command",
            "a reset is allowed"
        );
        assert_eq!(
            check_parameter("synchronous_commit", Some("ON")).unwrap(),
            "synchronous_commit"
        );
        for (name, value, says) in [
            ("bad name", "1", "not a PostgreSQL parameter name"),
            ("", "1", "not a PostgreSQL parameter name"),
            ("work_mem", "8MB\nhba_file = '/tmp/x'", "control character"),
            ("synchronous_commit", "local", "quorum"),
            ("synchronous_commit", "off", "quorum"),
            ("synchronous_commit", "remote_write", "quorum"),
        ] {
            let e = check_parameter(name, Some(value)).expect_err(name);
            assert!(e.contains(says), "{name}={value}: {e}");
        }
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(check_parameter("work_mem", Some(&long))
            .unwrap_err()
            .contains("at most"));
        assert!(check_parameter(&"a".repeat(64), None).is_err());
    }

    #[test]
    fn member_names_are_plain_and_short() {
        for good in ["n1", "db-1", "db_1", "DB_1", &"a".repeat(63)] {
            assert!(check_member_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a\"b", "x/../y", "a b", "a\nb", "é", &"a".repeat(64)] {
            let e = check_member_name(bad).expect_err(bad);
            assert!(e.contains("not a valid member name"), "{e}");
        }
        assert!(is_managed("Port") && !is_managed("work_mem"));
    }
}
