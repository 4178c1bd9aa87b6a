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
    let output = tokio::process::Command::new("mariadb")
        .args(options)
        .args([
            "--protocol=tcp",
            "-h",
            &address.ip().to_string(),
            "-P",
            &address.port().to_string(),
            "-u",
            "root",
            "-N",
            "-B",
            schema,
            "-e",
            sql,
        ])
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

    /// Server connections whose default schema is this one now.
    ///
    /// # Panics
    /// When MariaDB does not answer.
    pub async fn connections(&self, observer: &mut mysql_async::Conn) -> i64 {
        observer
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE db = ?",
                (&self.name,),
            )
            .await
            .unwrap()
            .unwrap_or_default()
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
