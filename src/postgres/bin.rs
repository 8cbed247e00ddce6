//! Where PostgreSQL's binaries are, and which OS user runs them.

use std::path::{Path, PathBuf};

use super::PgError;

/// Tools raftpg calls; all must be present in the chosen directory.
pub const TOOLS: [&str; 6] = [
    "postgres",
    "initdb",
    "pg_ctl",
    "pg_basebackup",
    "pg_rewind",
    "pg_controldata",
];

/// A directory holding PostgreSQL's server binaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBinaries {
    pub dir: PathBuf,
}

impl PgBinaries {
    /// Uses `configured` if given, else looks where PostgreSQL usually lives:
    /// `pg_config --bindir`, the newest `/usr/lib/postgresql/<version>/bin`, then `$PATH`.
    pub fn find(configured: Option<&Path>) -> Result<PgBinaries, PgError> {
        let candidates: Vec<PathBuf> = match configured {
            Some(dir) => vec![dir.to_path_buf()],
            None => default_candidates(),
        };
        for dir in &candidates {
            if dir.join("pg_ctl").is_file() && dir.join("postgres").is_file() {
                let found = PgBinaries { dir: dir.clone() };
                found.check()?;
                return Ok(found);
            }
        }
        let looked = candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(PgError::NotFound { looked })
    }

    /// Every tool raftpg needs is there.
    pub fn check(&self) -> Result<(), PgError> {
        for tool in TOOLS {
            if !self.dir.join(tool).is_file() {
                return Err(PgError::ToolMissing {
                    tool: tool.to_string(),
                    dir: self.dir.display().to_string(),
                });
            }
        }
        Ok(())
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn default_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(o) = std::process::Command::new("pg_config").arg("--bindir").output() {
        if o.status.success() {
            out.push(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        }
    }
    out.extend(
        newest_versions(Path::new("/usr/lib/postgresql"))
            .into_iter()
            .map(|v| v.join("bin")),
    );
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path));
    }
    out
}

/// `root/<N>` directories, highest numeric version first.
pub fn newest_versions(root: &Path) -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path()))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, p)| p).collect()
}

/// The unprivileged OS user PostgreSQL runs as when raftpg is root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `None` when raftpg is not root (PostgreSQL runs as raftpg's own user).
    pub fn for_current_process(os_user: &str) -> Result<Option<RunAs>, PgError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name(os_user)
            .ok()
            .flatten()
            .ok_or_else(|| PgError::NoOsUser(os_user.to_string()))?;
        Ok(Some(RunAs {
            name: os_user.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }

    /// Whether this user can reach `path`: every directory above it must be searchable (x) by it.
    pub fn check_reachable(&self, path: &Path) -> Result<(), PgError> {
        use std::os::unix::fs::MetadataExt;
        for dir in path.ancestors().skip(1) {
            let Ok(md) = std::fs::metadata(dir) else { continue };
            let ok = if md.uid() == self.uid {
                md.mode() & 0o100 != 0
            } else if md.gid() == self.gid {
                md.mode() & 0o010 != 0
            } else {
                md.mode() & 0o001 != 0
            };
            if !ok {
                return Err(PgError::Unreachable {
                    user: self.name.clone(),
                    dir: dir.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Gives `path` (and nothing above it) to this user, so PostgreSQL can own its directories.
    /// Gives `path` to the PostgreSQL user; a symlink itself, never what it points to
    /// (the directories it owns could hold a link to /etc/shadow).
    pub fn chown(&self, path: &Path) -> Result<(), PgError> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_first() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["9", "15", "13", "notaversion"] {
            std::fs::create_dir(dir.path().join(v)).unwrap();
        }
        let found = newest_versions(dir.path());
        let names: Vec<_> = found.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["15", "13", "9"]);
    }

    #[test]
    fn missing_binaries_say_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let err = PgBinaries::find(Some(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("apt-get install postgresql") && err.contains("postgres.bin_dir"),
            "{err}"
        );
    }

    #[test]
    fn incomplete_installation_names_the_tool() {
        let dir = tempfile::tempdir().unwrap();
        for t in ["postgres", "pg_ctl", "initdb"] {
            std::fs::write(dir.path().join(t), "").unwrap();
        }
        let err = PgBinaries::find(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("pg_basebackup is missing"), "{err}");
    }
}
