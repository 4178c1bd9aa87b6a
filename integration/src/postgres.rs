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
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=postgres dbname={database}",
            address.ip(),
            address.port()
        ),
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
