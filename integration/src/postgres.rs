//! Postgres helpers for the tests: psql and tokio-postgres clients, a
//! database of a test's own, and waiting for a query to be running.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::START_TIMEOUT;

/// The local Postgres every test shares.
pub const POSTGRES: &str = "127.0.0.1:5432";

/// psql's result: (exit success, stdout, stderr).
pub async fn psql(address: SocketAddr, connection: &str, sql: &str) -> (bool, String, String) {
    psql_in(address, "test", connection, sql).await
}

/// psql on database `database`.
pub async fn psql_in(
    address: SocketAddr,
    database: &str,
    connection: &str,
    sql: &str,
) -> (bool, String, String) {
    let conninfo = format!(
        "host=localhost hostaddr={} port={} user=postgres dbname={database} connect_timeout=10 {connection}",
        address.ip(),
        address.port()
    );
    let output = tokio::process::Command::new("psql")
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo,
            "-c",
            sql,
        ])
        .env("PGGSSENCMODE", "disable")
        .output()
        .await
        .expect("psql (postgresql-client) runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One query through psycopg 3 with the libpq it ships (18: Postgres 17's
/// `sslnegotiation=direct` among its options) on database `test`:
/// (success, the first column of the first row, the error).
pub async fn psycopg(address: SocketAddr, connection: &str, sql: &str) -> (bool, String, String) {
    const SCRIPT: &str = "import sys, psycopg\n\
        with psycopg.connect(sys.argv[1]) as connection:\n\
        \x20   print(connection.execute(sys.argv[2]).fetchone()[0])\n";
    let conninfo = format!(
        "host=localhost hostaddr={} port={} user=postgres dbname=test connect_timeout=10 \
         gssencmode=disable {connection}",
        address.ip(),
        address.port()
    );
    let output = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, &conninfo, sql])
        .output()
        .await
        .expect("python3 runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A tokio-postgres client of `address` on database `test` (its
/// connection driven in a task).
///
/// # Panics
/// When it cannot connect.
pub async fn connect(address: SocketAddr) -> tokio_postgres::Client {
    connect_to(address, "test").await.unwrap()
}

/// A tokio-postgres client of `address` on `database`.
///
/// # Errors
/// The connect or login error.
pub async fn connect_to(
    address: SocketAddr,
    database: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_with(address, &format!("user=postgres dbname={database}")).await
}

/// A tokio-postgres client of `address` on database `test` as `user`, with
/// `password` (a SCRAM login through a listener with `users`).
///
/// # Errors
/// The connect or login error.
pub async fn log_in(
    address: SocketAddr,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_with(
        address,
        &format!("user={user} password={password} dbname=test"),
    )
    .await
}

/// A tokio-postgres client of `address` with libpq-style `options`, its
/// connection driven in a task.
async fn connect_with(
    address: SocketAddr,
    options: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host={} port={} {options}", address.ip(), address.port()),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Waits until a statement containing `marker` runs on the server.
///
/// # Panics
/// When none runs within [`START_TIMEOUT`].
pub async fn wait_until_running(marker: &str) {
    let observer = connect(POSTGRES.parse().unwrap()).await;
    let running = format!(
        "select count(*) from pg_stat_activity where state = 'active' and query like '%{marker}%' and query not like '%pg_stat_activity%'"
    );
    let deadline = Instant::now() + START_TIMEOUT;
    while observer
        .query_one(&running, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < deadline, "{marker} never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A database of the test's own, dropped (with its connections) at the end.
pub struct Database {
    pub name: String,
}

impl Database {
    /// Creates `attache_<label>_<pid>`.
    ///
    /// # Panics
    /// When Postgres refuses.
    pub async fn create(label: &str) -> Self {
        let name = format!("attache_{label}_{}", std::process::id());
        let admin = connect(POSTGRES.parse().unwrap()).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self { name }
    }

    /// Server connections to this database now.
    ///
    /// # Panics
    /// When Postgres does not answer.
    pub async fn connections(&self, observer: &tokio_postgres::Client) -> i64 {
        observer
            .query_one(
                "select count(*) from pg_stat_activity where datname = $1",
                &[&self.name],
            )
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                "-X",
                "-q",
                "-d",
                "host=127.0.0.1 port=5432 user=postgres dbname=test",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// A Postgres of the test's own (`initdb` into a temporary directory, a
/// free port), reachable only over TLS with a client certificate:
/// `hostssl ... scram-sha-256 clientcert=verify-full` for `user`, plaintext
/// TCP refused. Started as the `postgres` user when the tests run as root
/// (Postgres refuses root). Stopped when dropped.
pub struct PrivatePostgres {
    pub port: u16,
    /// `pg_ctl` and the user to run it as.
    pg_ctl: std::path::PathBuf,
    as_root: bool,
    directory: tempfile::TempDir,
}

impl PrivatePostgres {
    /// `server`: the certificate and key it presents, `ca`: the CA its
    /// clients' certificates must come from; `user` logs in with `password`.
    ///
    /// # Panics
    /// When Postgres cannot be set up or does not start.
    pub async fn start_tls(server: (&str, &str), ca: &str, user: &str, password: &str) -> Self {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        let data = root.join("data");
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Postgres' server package")
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .find(|bin| bin.join("initdb").exists())
            .expect("initdb");
        let as_root = nix_is_root();
        if as_root {
            chown_postgres(root);
        }
        let run = |program: &std::path::Path, arguments: &[&str]| {
            let mut command = if as_root {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(program);
                command
            } else {
                std::process::Command::new(program)
            };
            command.args(arguments);
            command
        };
        let initdb = run(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )
        .output()
        .unwrap();
        assert!(
            initdb.status.success(),
            "{}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        for (file, name) in [
            (server.0, "server.crt"),
            (server.1, "server.key"),
            (ca, "ca.crt"),
        ] {
            let target = data.join(name);
            std::fs::copy(file, &target).unwrap();
            std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if as_root {
                chown_postgres(&target);
            }
        }
        let port = crate::servers::closed_port().port();
        let settings = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n\
             password_encryption = 'scram-sha-256'\nfsync = off\n",
            root.display()
        );
        append(&data.join("postgresql.conf"), &settings);
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all {user} 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n\
                 host all all 127.0.0.1/32 reject\n"
            ),
        )
        .unwrap();
        // pg_ctl starts the server in the background and waits until it accepts.
        let log = root.join("server.log");
        let started = run(
            &bin.join("pg_ctl"),
            &[
                "start",
                "-w",
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
        assert!(
            started.status.success(),
            "{}{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let started = Self {
            port,
            pg_ctl: bin.join("pg_ctl"),
            as_root,
            directory,
        };
        let socket = started.directory.path().display().to_string();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let created = std::process::Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-h",
                    &socket,
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    &format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'"),
                ])
                .output()
                .unwrap();
            if created.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the private Postgres never answered: {}",
                String::from_utf8_lossy(&created.stderr)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.directory.path().join("data");
        let mut command = if self.as_root {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&self.pg_ctl);
            command
        } else {
            std::process::Command::new(&self.pg_ctl)
        };
        let _ = command
            .args(["stop", "-m", "immediate", "-D", data.to_str().unwrap()])
            .output();
    }
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn chown_postgres(path: &std::path::Path) {
    let status = std::process::Command::new("chown")
        .args(["postgres:postgres", path.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}
