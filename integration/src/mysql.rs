//! MariaDB helpers for the tests: mysql_async connections, the `mariadb`
//! CLI, a schema of a test's own, and the server's own view of who is
//! connected.

use std::net::SocketAddr;

use mysql_async::prelude::Queryable as _;

/// The local MariaDB every test shares (root, no password).
pub const MARIADB: &str = "127.0.0.1:3306";

/// Connection options for `user` with `password` on `schema` at `address`.
pub fn options(
    address: SocketAddr,
    user: &str,
    password: &str,
    schema: Option<&str>,
) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(address.ip().to_string())
        .tcp_port(address.port())
        .user(Some(user))
        .pass(Some(password))
        .db_name(schema)
        .prefer_socket(false)
        .into()
}

/// A connection as root (no password) on `schema` at `address`.
///
/// # Panics
/// When the connection fails.
pub async fn connect(address: SocketAddr, schema: &str) -> mysql_async::Conn {
    mysql_async::Conn::new(options(address, "root", "", Some(schema)))
        .await
        .unwrap_or_else(|error| panic!("connecting to {address}: {error}"))
}

/// The `mariadb` CLI as root on `schema`: (exit success, stdout, stderr).
pub async fn mariadb(address: SocketAddr, schema: &str, sql: &str) -> (bool, String, String) {
    mariadb_with(address, schema, &[], sql).await
}

/// The `mariadb` CLI with extra options (`--ssl-ca=...`).
pub async fn mariadb_with(
    address: SocketAddr,
    schema: &str,
    options: &[&str],
    sql: &str,
) -> (bool, String, String) {
    let (host, port) = (address.ip().to_string(), address.port().to_string());
    let mut arguments = options.to_vec();
    arguments.extend(["--protocol=tcp", "-h", &host, "-P", &port]);
    run_mariadb(&arguments, sql, Some(schema)).await
}

/// The `mariadb` CLI as root with `arguments`, running `sql` (on
/// `schema`), rows tab-separated without headers: (exit success, stdout,
/// stderr).
async fn run_mariadb(
    arguments: &[&str],
    sql: &str,
    schema: Option<&str>,
) -> (bool, String, String) {
    let output = tokio::process::Command::new("mariadb")
        .args(arguments)
        .args(["-u", "root", "-N", "-B", "-e", sql])
        .args(schema)
        .output()
        .await
        .expect("the mariadb client runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A schema of the test's own, dropped at the end.
pub struct Schema {
    pub name: String,
}

impl Schema {
    /// Creates `attache_<label>_<pid>`.
    ///
    /// # Panics
    /// When MariaDB refuses.
    pub async fn create(label: &str) -> Self {
        let name = format!("attache_{label}_{}", std::process::id());
        let mut admin = connect(MARIADB.parse().unwrap(), "test").await;
        admin
            .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .unwrap();
        admin
            .query_drop(format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        admin.disconnect().await.unwrap();
        Self { name }
    }

    /// Creates `attache_<label>_<pid>` and runs `sql` in it (tables, rows).
    ///
    /// # Panics
    /// When MariaDB refuses.
    pub async fn with(label: &str, sql: &str) -> Self {
        let schema = Self::create(label).await;
        let mut setup = connect(MARIADB.parse().unwrap(), &schema.name).await;
        setup.query_drop(sql).await.unwrap();
        setup.disconnect().await.unwrap();
        schema
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = std::process::Command::new("mariadb")
            .args([
                "--protocol=tcp",
                "-h",
                "127.0.0.1",
                "-u",
                "root",
                "-e",
                &format!("DROP DATABASE IF EXISTS {}", self.name),
            ])
            .output();
    }
}

/// A MariaDB of the test's own (`mariadb-install-db` into a temporary
/// directory, a free port): TLS with the given certificates and
/// `require_secure_transport`, stopped when dropped.
pub struct PrivateMariadb {
    pub address: SocketAddr,
    directory: tempfile::TempDir,
    server: std::process::Child,
}

impl PrivateMariadb {
    /// `server`: the certificate and key it presents, `ca`: the CA its
    /// clients' certificates must come from.
    ///
    /// # Panics
    /// When MariaDB cannot be set up or does not start.
    pub async fn start_tls(server: (&str, &str), ca: &str) -> Self {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        let data = root.join("data");
        let install = std::process::Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .expect("mariadb-install-db (the mariadb-server package) runs");
        assert!(
            install.status.success(),
            "{}",
            String::from_utf8_lossy(&install.stderr)
        );
        let address = crate::servers::closed_port();
        let server = std::process::Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                &format!("--datadir={}", data.display()),
                &format!("--port={}", address.port()),
                "--bind-address=127.0.0.1",
                &format!("--socket={}", root.join("socket").display()),
                &format!("--pid-file={}", root.join("pid").display()),
                &format!("--ssl-cert={}", server.0),
                &format!("--ssl-key={}", server.1),
                &format!("--ssl-ca={ca}"),
                "--require-secure-transport=ON",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mariadbd runs");
        let private = Self {
            address,
            directory,
            server,
        };
        let started = std::time::Instant::now();
        while !private.admin("SELECT 1").await.0 {
            assert!(
                started.elapsed() < crate::START_TIMEOUT,
                "the private MariaDB did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        private
    }

    /// SQL as root over the server's socket: (success, stdout, stderr).
    pub async fn admin(&self, sql: &str) -> (bool, String, String) {
        let socket = self.directory.path().join("socket");
        run_mariadb(
            &["--no-defaults", "-S", socket.to_str().unwrap()],
            sql,
            None,
        )
        .await
    }
}

impl Drop for PrivateMariadb {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
