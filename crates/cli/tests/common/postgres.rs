//! Throwaway PostgreSQL clusters made by a test: initdb in a directory of
//! the test's own, its own port, run as `postgres` when the test runs as root
//! (initdb refuses root), stopped with SIGKILL to its whole process group on
//! drop. Standbys come from `pg_basebackup -R` of a running cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The PostgreSQL server binaries (`initdb`, `postgres`), from PATH or
/// Debian's `/usr/lib/postgresql/*/bin`, newest first.
pub fn bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|p| p.join("initdb")).collect())
        .unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin").join("initdb")).collect())
        .unwrap_or_default();
    debian.sort();
    debian.reverse();
    candidates.extend(debian);
    let initdb = candidates.into_iter().find(|p| p.is_file())?;
    let dir = std::fs::canonicalize(initdb).ok()?.parent()?.to_owned();
    dir.join("postgres").is_file().then_some(dir)
}

/// The uid and gid that run PostgreSQL: `postgres` when we are root, else
/// ourselves (`None`).
pub fn server_user() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> u32 {
        let out = Command::new("id").args(args).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
    };
    (id(&["-u"]) == 0).then(|| (id(&["-u", "postgres"]), id(&["-g", "postgres"])))
}

/// `command`, run as the server user.
pub fn as_server_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

/// Hands `path` to the server user.
pub fn give(path: &Path, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// A cluster's data directory, its port and, once started, its postmaster.
pub struct Cluster {
    pub bin: PathBuf,
    /// The directory the cluster lives in (data, sockets, log).
    pub dir: PathBuf,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Cluster {
    /// A new cluster in `dir` (made here), trust authentication, not started.
    pub fn init(bin: &Path, dir: &Path) -> Self {
        let cluster = Self::at(bin, dir);
        let out = as_server_user(
            Command::new(bin.join("initdb"))
                .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
                .arg(&cluster.data),
            cluster.user,
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    /// A standby of `primary` in `dir`: `pg_basebackup -R` (streaming WAL,
    /// `primary_conninfo` and `standby.signal` written), not started.
    pub fn standby_of(primary: &Cluster, dir: &Path) -> Self {
        let cluster = Self::at(&primary.bin, dir);
        let out = as_server_user(
            Command::new(primary.bin.join("pg_basebackup"))
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres", "-R", "-X", "stream"])
                .args(["--no-sync", "-D"])
                .arg(&cluster.data),
            cluster.user,
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    fn at(bin: &Path, dir: &Path) -> Self {
        let user = server_user();
        std::fs::create_dir_all(dir).unwrap();
        give(dir, user);
        let socket_dir = dir.join("sockets");
        std::fs::create_dir(&socket_dir).unwrap();
        give(&socket_dir, user);
        Self {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            data: dir.join("pgdata"),
            socket_dir,
            port: super::free_port(),
            user,
            child: None,
        }
    }

    /// Writes `name` in the data directory, owned by the server user.
    pub fn write(&self, name: &str, text: &str) {
        let path = self.data.join(name);
        std::fs::write(&path, text).unwrap();
        give(&path, self.user);
    }

    /// Starts the postmaster (its own process group) with `settings`
    /// (`name=value`) and waits until it answers.
    pub fn start(&mut self, settings: &[&str]) {
        let log = self.dir.join("postgres.log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        give(&log, self.user);
        let mut command = Command::new(self.bin.join("postgres"));
        command.arg("-D").arg(&self.data).args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"]);
        for setting in settings {
            command.args(["-c", setting]);
        }
        command.arg("-k").arg(&self.socket_dir).stdout(Stdio::null()).stderr(log_file);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        self.child = Some(as_server_user(&mut command, self.user).spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.psql("SELECT 1").is_ok_and(|out| out.trim() == "1") {
            assert!(Instant::now() < deadline, "PostgreSQL did not come up: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL to the postmaster and every process of its group (backends,
    /// WAL writer, WAL senders): the machine's power cut, as PostgreSQL sees it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
        }
    }

    /// Runs `sql` over the Unix socket as the superuser; its output.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let out = as_server_user(
            Command::new(self.bin.join("psql"))
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-p", &port, "-U", "postgres", "-d", "postgres", "-tAc", sql]),
            self.user,
        )
        .output()
        .map_err(|e| e.to_string())?;
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}
