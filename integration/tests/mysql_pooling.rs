//! The MySQL ambassador against the real MariaDB, with real clients
//! (mysql_async, the mariadb CLI, Go's go-sql-driver/mysql): many clients'
//! transactions over a small pool, session state that pins instead of
//! leaking, schemas that follow their client, query timeouts that interrupt
//! only their own query, logins checked against `users`, the relayed login of
//! the one-liner, large results streamed whole, and clients that lie.

use std::net::SocketAddr;
use std::time::Duration;

use attache_integration::mysql::{
    MARIADB, PrivateMariadb, Schema, connect, mariadb, mariadb_with, options,
};
use attache_integration::pki::{ALLOWED_ID, Pki};
use attache_integration::{Attache, established_to};
use mysql_async::prelude::Queryable as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn config(settings: &str) -> String {
    format!(
        "listeners:\n  - name: db\n    listen: 127.0.0.1:0\n    protocol: mysql\n    upstream: mariadb\n    mysql:\n{settings}\
         upstreams:\n  mariadb:\n    endpoints: [\"{MARIADB}\"]\n"
    )
}

fn direct() -> SocketAddr {
    MARIADB.parse().unwrap()
}

/// Polls attache's established connections to MariaDB (`ss`, not the
/// server's processlist) until told to stop; the watcher answers the most
/// it saw.
fn watch_server_connections(
    pid: u32,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<usize>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let mut most = 0;
        loop {
            let now = tokio::task::spawn_blocking(move || established_to(pid, 3306))
                .await
                .unwrap();
            most = most.max(now);
            if stopped.try_recv().is_ok() {
                return most;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (stop, watcher)
}

/// No session of listener `db` pinned for any of `reasons`.
async fn assert_nothing_pinned(attache: &Attache, reasons: &[&str]) {
    for reason in reasons {
        let sample = format!("attache_mysql_pinned_total{{listener=\"db\",reason=\"{reason}\"}}");
        assert_eq!(
            attache.metric(&sample).await.unwrap(),
            0.0,
            "pinned: {reason}"
        );
    }
}

/// No session of listener `db` pinned, for any reason.
async fn assert_never_pinned(attache: &Attache) {
    let metrics = attache.metrics().await.unwrap();
    let pinned: Vec<_> = metrics
        .iter()
        .filter(|(sample, value)| {
            sample.starts_with("attache_mysql_pinned_total{listener=\"db\"") && **value > 0.0
        })
        .collect();
    assert!(pinned.is_empty(), "pinned: {pinned:?}");
}

/// The server error code of a failed query.
fn server_code(error: &mysql_async::Error) -> Option<u16> {
    match error {
        mysql_async::Error::Server(error) => Some(error.code),
        _ => None,
    }
}

#[tokio::test]
async fn twenty_clients_share_two_server_connections_through_transaction_pooling() {
    let schema = Schema::with(
        "mysql_pooling",
        "CREATE TABLE counters (id INT PRIMARY KEY, total BIGINT NOT NULL);
         INSERT INTO counters VALUES (1, 0);
         CREATE TABLE events (id INT AUTO_INCREMENT PRIMARY KEY, client INT, n INT)",
    )
    .await;
    let attache = Attache::run(&config("      pool_size: 2\n")).await.unwrap();
    let front = attache.listener("db");

    // Watch attache's server connections while the clients run.
    let (stop, watcher) = watch_server_connections(attache.pid());

    let mut clients = Vec::new();
    for client in 0..20 {
        let name = schema.name.clone();
        clients.push(tokio::spawn(async move {
            let mut connection = connect(front, &name).await;
            for n in 0..25 {
                connection
                    .query_drop(format!(
                        "INSERT INTO events (client, n) VALUES ({client}, {n})"
                    ))
                    .await
                    .unwrap();
                connection.query_drop("BEGIN").await.unwrap();
                connection
                    .query_drop("UPDATE counters SET total = total + 1 WHERE id = 1")
                    .await
                    .unwrap();
                let total: i64 = connection
                    .query_first("SELECT total FROM counters WHERE id = 1")
                    .await
                    .unwrap()
                    .unwrap();
                assert!(total >= 1);
                connection.query_drop("COMMIT").await.unwrap();
            }
            connection.disconnect().await.unwrap();
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    stop.send(()).unwrap();
    let most = watcher.await.unwrap();

    let mut check = connect(direct(), &schema.name).await;
    let total: i64 = check
        .query_first("SELECT total FROM counters WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(total, 20 * 25, "every transaction's update landed once");
    let events: i64 = check
        .query_first("SELECT COUNT(*) FROM events")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(events, 20 * 25);
    assert!(
        most <= 2,
        "at most pool_size server connections, saw {most}"
    );
    attache
        .wait_for_metric("attache_mysql_transactions_total{listener=\"db\"}", 500.0)
        .await
        .unwrap();
    assert_eq!(
        attache
            .metric("attache_mysql_queries_total{listener=\"db\",command=\"UPDATE\"}")
            .await
            .unwrap(),
        500.0
    );
    assert_never_pinned(&attache).await;
}

#[tokio::test]
async fn go_sql_driver_prepares_and_commits_through_two_server_connections() {
    // database/sql with go-sql-driver/mysql: a pool of 8 over attache's 2,
    // binary-protocol prepared statements (one kept per worker, one made,
    // executed and closed per parameterized query) and transactions.
    let schema = Schema::with("mysql_go", "CREATE TABLE events (worker INT, n INT)").await;
    let attache = Attache::run(&config("      pool_size: 2\n")).await.unwrap();
    let front = attache.listener("db");
    let (stop, watcher) = watch_server_connections(attache.pid());
    let output = tokio::process::Command::new(attache_integration::go_client("go-mysql").await)
        .arg(format!("root@tcp({front})/{}", schema.name))
        .arg("events")
        .output()
        .await
        .unwrap();
    stop.send(()).unwrap();
    let most = watcher.await.unwrap();
    attache_integration::assert_succeeded(&output, "the Go client");
    // 8 workers, 20 rounds, one row each: n = 0..20 per worker.
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("{} {}", 8 * 20, 8 * (0..20).sum::<i32>())
    );
    assert!(
        most <= 2,
        "at most pool_size server connections, saw {most}"
    );
    assert_eq!(
        attache
            .metric("attache_mysql_queries_total{listener=\"db\",command=\"COMMIT\"}")
            .await
            .unwrap(),
        160.0
    );
    assert_never_pinned(&attache).await;
}

#[tokio::test]
async fn session_state_pins_its_connection_and_never_reaches_another_client() {
    let schema = Schema::create("mysql_pins").await;
    let attache = Attache::run(&config("      pool_size: 1\n      queue_timeout: 1s\n"))
        .await
        .unwrap();
    let front = attache.listener("db");

    // Both log in first (mysql_async reads the server's settings as it
    // connects, which takes a server connection).
    let mut first = connect(front, &schema.name).await;
    let mut second = connect(front, &schema.name).await;
    first.query_drop("SET @secret = 42").await.unwrap();
    first.query_drop("SET time_zone = '+05:00'").await.unwrap();
    let secret: Option<i64> = first.query_first("SELECT @secret").await.unwrap().unwrap();
    assert_eq!(secret, Some(42), "the pinned session keeps its own state");
    attache
        .wait_for_metric(
            "attache_mysql_pinned_total{listener=\"db\",reason=\"user_variable\"}",
            1.0,
        )
        .await
        .unwrap();

    // The only server connection is pinned: another client waits, then
    // gets the pool's error, not the pinned connection.
    let error = second.query_drop("SELECT 1").await.unwrap_err();
    assert_eq!(server_code(&error), Some(1040), "{error}");
    assert_eq!(
        attache
            .metric("attache_mysql_pool_timeouts_total{listener=\"db\"}")
            .await
            .unwrap(),
        1.0
    );

    // Once the first client leaves, its connection is reset before the
    // next one gets it.
    first.disconnect().await.unwrap();
    let leaked: Option<i64> = second.query_first("SELECT @secret").await.unwrap().unwrap();
    assert_eq!(leaked, None, "a user variable never reaches another client");
    let zone: String = second
        .query_first("SELECT @@session.time_zone")
        .await
        .unwrap()
        .unwrap();
    let global: String = second
        .query_first("SELECT @@global.time_zone")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        zone, global,
        "a session setting never reaches another client"
    );
}

#[tokio::test]
async fn replayed_variables_follow_their_client_across_one_server_connection() {
    let schema = Schema::create("mysql_replay").await;
    let attache = Attache::run(&config("      pool_size: 1\n")).await.unwrap();
    let front = attache.listener("db");
    let mut first = connect(front, &schema.name).await;
    let mut second = connect(front, &schema.name).await;
    let session = |variable: &'static str| format!("SELECT @@session.{variable}");

    first.query_drop("SET time_zone = '+05:00'").await.unwrap();
    first.query_drop("SET NAMES latin1").await.unwrap();
    first
        .query_drop("SET SESSION sql_mode = 'ANSI_QUOTES', autocommit = 0")
        .await
        .unwrap();
    first.query_drop("COMMIT").await.unwrap();
    // The other client, on the same (only) server connection, sees the
    // server's own settings...
    let zone: String = second
        .query_first(session("time_zone"))
        .await
        .unwrap()
        .unwrap();
    let global: String = second
        .query_first("SELECT @@global.time_zone")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(zone, global);
    let charset: String = second
        .query_first(session("character_set_client"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(charset, "utf8mb4");
    let autocommit: i64 = second
        .query_first(session("autocommit"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(autocommit, 1);
    let mode: String = second
        .query_first(session("sql_mode"))
        .await
        .unwrap()
        .unwrap();
    assert!(!mode.contains("ANSI_QUOTES"), "{mode}");
    // ...and the first gets its own back on it.
    let (zone, charset, mode): (String, String, String) = first
        .query_first(
            "SELECT @@session.time_zone, @@session.character_set_client, @@session.sql_mode",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (zone.as_str(), charset.as_str(), mode.as_str()),
        ("+05:00", "latin1", "ANSI_QUOTES")
    );
    first.query_drop("COMMIT").await.unwrap();
    // COM_RESET_CONNECTION takes the client back to its login's settings.
    first.reset().await.unwrap();
    let zone: String = first
        .query_first(session("time_zone"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(zone, global);
    assert_nothing_pinned(&attache, &["set", "session_state"]).await;
    // A variable off the list pins.
    second
        .query_drop("SET SESSION wait_timeout = 100")
        .await
        .unwrap();
    attache
        .wait_for_metric(
            "attache_mysql_pinned_total{listener=\"db\",reason=\"set\"}",
            1.0,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn use_switches_the_clients_schema_without_pinning() {
    let home = Schema::create("mysql_home").await;
    let other = Schema::create("mysql_other").await;
    let mut setup = connect(direct(), &other.name).await;
    setup
        .query_drop("CREATE TABLE marker (v VARCHAR(10)); INSERT INTO marker VALUES ('other')")
        .await
        .unwrap();
    let attache = Attache::run(&config("      pool_size: 1\n")).await.unwrap();
    let front = attache.listener("db");

    let mut mover = connect(front, &home.name).await;
    mover
        .query_drop(format!("USE {}", other.name))
        .await
        .unwrap();
    // Another client of the home schema gets the same server connection
    // back in its own schema...
    let mut stayer = connect(front, &home.name).await;
    let schema: String = stayer
        .query_first("SELECT DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(schema, home.name);
    // ...and the one that moved reads its new schema's tables.
    let marker: String = mover
        .query_first("SELECT v FROM marker")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(marker, "other");
    let schema: String = mover
        .query_first("SELECT DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(schema, other.name);
    assert_eq!(
        attache
            .metric("attache_mysql_pinned_total{listener=\"db\",reason=\"session_state\"}")
            .await
            .unwrap(),
        0.0,
        "USE does not pin"
    );
}

#[tokio::test]
async fn query_timeout_interrupts_only_the_slow_query_and_the_session_goes_on() {
    let schema = Schema::create("mysql_timeout").await;
    let attache = Attache::run(&config("      pool_size: 2\n      query_timeout: 1s\n"))
        .await
        .unwrap();
    let front = attache.listener("db");
    let mut connection = connect(front, &schema.name).await;
    let error = connection.query_drop("SELECT SLEEP(30)").await.unwrap_err();
    assert_eq!(
        server_code(&error),
        Some(1317),
        "the server's own interruption error: {error}"
    );
    let one: i64 = connection.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1, "the session goes on");
    assert_eq!(
        attache
            .metric("attache_mysql_query_timeouts_total{listener=\"db\"}")
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test]
async fn users_log_in_with_their_passwords_and_attache_logs_into_the_server_as_itself() {
    let schema = Schema::create("mysql_users").await;
    let attache = Attache::run(&config(
        "      server_user: root\n      server_password: \"\"\n      users:\n        app: s3cret\n",
    ))
    .await
    .unwrap();
    let front = attache.listener("db");

    let mut app = mysql_async::Conn::new(options(front, "app", "s3cret", Some(&schema.name)))
        .await
        .unwrap();
    let user: String = app
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert!(
        user.starts_with("root@"),
        "the server sees attache's login: {user}"
    );

    let wrong = mysql_async::Conn::new(options(front, "app", "wrong", Some(&schema.name)))
        .await
        .unwrap_err();
    assert_eq!(server_code(&wrong), Some(1045), "{wrong}");
    let unknown = mysql_async::Conn::new(options(front, "nobody", "s3cret", Some(&schema.name)))
        .await
        .unwrap_err();
    assert_eq!(server_code(&unknown), Some(1045), "{unknown}");

    let (_, config) = attache.admin_get("/config").await.unwrap();
    assert!(!config.contains("s3cret"), "passwords never show: {config}");
}

#[tokio::test]
async fn users_from_a_file_log_in_and_a_bad_file_keeps_attache_from_starting() {
    let schema = Schema::create("mysql_users_file").await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "; attache's users\n\"reporting\" \"fr0m-file\"\n\"o\"\"brien\" \"quoted\"\n",
    )
    .unwrap();
    let settings = format!(
        "      server_user: root\n      server_password: \"\"\n      users_file: {}\n",
        file.path().display()
    );
    let attache = Attache::run(&config(&settings)).await.unwrap();
    let front = attache.listener("db");
    let mut reporting =
        mysql_async::Conn::new(options(front, "reporting", "fr0m-file", Some(&schema.name)))
            .await
            .unwrap();
    let one: i64 = reporting.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    mysql_async::Conn::new(options(front, "o\"brien", "quoted", Some(&schema.name)))
        .await
        .unwrap();
    let wrong = mysql_async::Conn::new(options(front, "reporting", "guess", Some(&schema.name)))
        .await
        .unwrap_err();
    assert_eq!(server_code(&wrong), Some(1045), "{wrong}");

    std::fs::write(file.path(), "\"reporting\" \"fine\"\nreporting unquoted\n").unwrap();
    let error = Attache::run(&config(&settings))
        .await
        .err()
        .expect("attache refuses to start")
        .to_string();
    assert!(error.contains("mysql.users_file: line 2 of"), "{error}");
}

#[tokio::test]
async fn the_one_liner_without_a_user_relays_each_clients_own_login() {
    let schema = Schema::create("mysql_relay").await;
    let attache = Attache::spawn(
        &["mysql", "--listen", "127.0.0.1:0", "--upstream", MARIADB],
        None,
    )
    .await
    .unwrap();
    let front = attache.listener("mysql");
    let (ok, stdout, stderr) = mariadb(front, &schema.name, "SELECT DATABASE(), 6 * 7").await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("{}\t42", schema.name));
}

#[tokio::test]
async fn prepared_statements_follow_their_client_across_server_connections() {
    let table = |value| format!("CREATE TABLE t (v VARCHAR(10)); INSERT INTO t VALUES ('{value}')");
    let first_schema = Schema::with("mysql_prepared_a", &table("a")).await;
    let second_schema = Schema::with("mysql_prepared_b", &table("b")).await;
    let (a, b) = (&first_schema.name, &second_schema.name);
    let attache = Attache::run(&config(
        "      pool_size: 2
      max_prepared_statements: 2
",
    ))
    .await
    .unwrap();
    let front = attache.listener("db");
    let mut first = connect(front, a).await;
    let mut second = connect(front, a).await;
    let sql = "SELECT v, CONNECTION_ID(), ? + 1 FROM t";

    // Prepared and executed by the only active client: on one connection,
    // which then goes back to the pool.
    let statement = first.prep(sql).await.unwrap();
    let row: (String, u64, i64) = first.exec_first(&statement, (1,)).await.unwrap().unwrap();
    assert_eq!((row.0.as_str(), row.2), ("a", 2));
    first.query_drop(format!("USE {b}")).await.unwrap();

    // Another client holds that connection in a transaction: the statement
    // runs on the other one, prepared there in the schema it was prepared
    // in (the client has moved to another since).
    second.query_drop("BEGIN").await.unwrap();
    let held: u64 = second
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    let row: (String, u64, i64) = first.exec_first(&statement, (2,)).await.unwrap().unwrap();
    assert_eq!((row.0.as_str(), row.2), ("a", 3));
    assert_ne!(
        row.1, held,
        "the statement ran on another server connection"
    );
    let here: String = first.query_first("SELECT v FROM t").await.unwrap().unwrap();
    assert_eq!(here, "b", "the client is back in its own schema");
    second.query_drop("COMMIT").await.unwrap();

    // The same text prepared in another schema is another statement.
    second.query_drop(format!("USE {b}")).await.unwrap();
    let row: (String, u64, i64) = second.exec_first(sql, (3,)).await.unwrap().unwrap();
    assert_eq!((row.0.as_str(), row.2), ("b", 4));

    // Three statements over connections that keep two: each is closed
    // and prepared again as the others push it out.
    let more = [
        first.prep("SELECT ? + 10").await.unwrap(),
        first.prep("SELECT ? + 20").await.unwrap(),
    ];
    for round in 0..3_i64 {
        let row: (String, u64, i64) = first
            .exec_first(&statement, (round,))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((row.0.as_str(), row.2), ("a", round + 1));
        for (statement, add) in more.iter().zip([10, 20]) {
            let sum: i64 = first
                .exec_first(statement, (round,))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(sum, round + add);
        }
    }
    first.close(statement).await.unwrap();
    first.disconnect().await.unwrap();
    second.disconnect().await.unwrap();

    attache
        .wait_for_metric_at_least(
            "attache_mysql_queries_total{listener=\"db\",command=\"EXECUTE\"}",
            12.0,
        )
        .await
        .unwrap();
    assert_never_pinned(&attache).await;
}

#[tokio::test]
async fn a_prepared_statement_is_read_with_its_clients_sql_mode_wherever_it_runs() {
    let schema = Schema::with(
        "mysql_prepared_mode",
        "CREATE TABLE t (v VARCHAR(10)); INSERT INTO t VALUES ('column')",
    )
    .await;
    // One server connection that keeps one statement: the two clients'
    // statements push each other out.
    let attache = Attache::run(&config(
        "      pool_size: 1\n      max_prepared_statements: 1\n",
    ))
    .await
    .unwrap();
    let front = attache.listener("db");
    let mut ansi = connect(front, &schema.name).await;
    let mut plain = connect(front, &schema.name).await;
    let sql = "SELECT \"v\" FROM t";

    // With ANSI_QUOTES "v" names the column; without, it is a string.
    ansi.query_drop("SET sql_mode = 'ANSI_QUOTES'")
        .await
        .unwrap();
    let quoted = ansi.prep(sql).await.unwrap();
    ansi.query_drop("SET sql_mode = ''").await.unwrap();
    let read: String = ansi.exec_first(&quoted, ()).await.unwrap().unwrap();
    assert_eq!(read, "column");

    // The same text from a client without ANSI_QUOTES is its own statement.
    let string = plain.prep(sql).await.unwrap();
    let read: String = plain.exec_first(&string, ()).await.unwrap().unwrap();
    assert_eq!(read, "v");

    // The first statement, pushed out, is prepared again as its client
    // prepared it, and the client's session is as it left it.
    let read: String = ansi.exec_first(&quoted, ()).await.unwrap().unwrap();
    assert_eq!(read, "column");
    let read: String = ansi.query_first(sql).await.unwrap().unwrap();
    assert_eq!(read, "v", "the client's own sql_mode is back");
    let read: String = plain.exec_first(&string, ()).await.unwrap().unwrap();
    assert_eq!(read, "v");
    assert_never_pinned(&attache).await;
}

#[tokio::test]
async fn a_client_that_asks_for_found_rows_gets_matched_row_counts_from_a_pool_of_its_own() {
    let schema = Schema::with(
        "mysql_found_rows",
        "CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 7)",
    )
    .await;
    let attache = Attache::run(&config("      pool_size: 1\n")).await.unwrap();
    let front = attache.listener("db");
    let found_rows_options = |address| {
        let options = options(address, "root", "", Some(&schema.name));
        mysql_async::OptsBuilder::from_opts(options).client_found_rows(true)
    };
    // An UPDATE that matches a row and changes nothing: JDBC and
    // Hibernate (found rows on) count 1, other clients 0; one that changes
    // it: 1 for everyone. Through attache as directly.
    let unchanged = "UPDATE t SET v = v WHERE id = 1";
    let changing = "UPDATE t SET v = v + 1 WHERE id = 1";
    let mut expected = Vec::new();
    let mut seen = Vec::new();
    for address in [direct(), front] {
        let mut matched = mysql_async::Conn::new(found_rows_options(address))
            .await
            .unwrap();
        let mut changed = connect(address, &schema.name).await;
        for _ in 0..2 {
            matched.query_drop(unchanged).await.unwrap();
            changed.query_drop(unchanged).await.unwrap();
            let counts = (matched.affected_rows(), changed.affected_rows());
            changed.query_drop(changing).await.unwrap();
            let counts = (counts.0, counts.1, changed.affected_rows());
            if address == direct() {
                expected.push(counts);
            } else {
                seen.push(counts);
            }
        }
        matched.disconnect().await.unwrap();
        changed.disconnect().await.unwrap();
    }
    assert_eq!(expected, [(1, 0, 1), (1, 0, 1)]);
    assert_eq!(seen, expected);
    let pools = attache.admin_get("/upstreams").await.unwrap().1;
    assert!(
        pools.contains(&format!("{}/root+found_rows", schema.name)),
        "{pools}"
    );
}

#[tokio::test]
async fn a_large_result_streams_through_whole() {
    let schema = Schema::create("mysql_large").await;
    let attache = Attache::run(&config("      pool_size: 1\n")).await.unwrap();
    let front = attache.listener("db");
    let mut connection = connect(front, &schema.name).await;
    // 64 rows of 1 MiB and 100,000 small rows, summed on both ends.
    let query = "SELECT REPEAT(CHAR(65 + seq % 26), 1048576) FROM seq_1_to_64";
    let rows: Vec<String> = connection.query(query).await.unwrap();
    assert_eq!(rows.len(), 64);
    let through: usize = rows.iter().map(String::len).sum();
    assert_eq!(through, 64 << 20);
    assert!(rows.iter().enumerate().all(|(index, row)| {
        let letter = b'A' + ((index + 1) % 26) as u8;
        row.bytes().all(|byte| byte == letter)
    }));
    let small: Vec<(i64, String)> = connection
        .query("SELECT seq, MD5(seq) FROM seq_1_to_100000")
        .await
        .unwrap();
    let mut direct_connection = connect(direct(), &schema.name).await;
    let expected: Vec<(i64, String)> = direct_connection
        .query("SELECT seq, MD5(seq) FROM seq_1_to_100000")
        .await
        .unwrap();
    assert_eq!(small, expected);
}

#[tokio::test]
async fn load_data_local_infile_streams_a_file_through_transaction_pooling() {
    let schema = Schema::create("mysql_infile").await;
    let mut setup = connect(direct(), &schema.name).await;
    setup
        .query_drop("CREATE TABLE loaded (id INT PRIMARY KEY, label VARCHAR(40))")
        .await
        .unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut expected_sum = 0_i64;
    {
        use std::io::Write as _;
        for id in 1..=50_000_i64 {
            writeln!(file, "{id}\tlabel-{id:032}").unwrap();
            expected_sum += id;
        }
        file.flush().unwrap();
    }
    let path = file.path().to_str().unwrap().to_owned();
    let attache = Attache::run(&config("      pool_size: 1\n")).await.unwrap();
    let front = attache.listener("db");
    let options =
        mysql_async::OptsBuilder::from_opts(options(front, "root", "", Some(&schema.name)))
            .local_infile_handler(Some(mysql_async::WhiteListFsHandler::new(
                &[path.as_str()][..],
            )));
    let mut connection = mysql_async::Conn::new(options).await.unwrap();
    connection
        .query_drop(format!("LOAD DATA LOCAL INFILE '{path}' INTO TABLE loaded"))
        .await
        .unwrap();
    // The session goes on, and its one server connection is back.
    let one: i64 = connection.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    let (count, sum): (i64, i64) = setup
        .query_first("SELECT COUNT(*), SUM(id) FROM loaded")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((count, sum), (50_000, expected_sum));
}

#[tokio::test]
async fn sysbench_read_write_runs_fifty_threads_over_five_server_connections() {
    let schema = Schema::create("mysql_sysbench").await;
    let attache = Attache::run(&config("      pool_size: 5\n")).await.unwrap();
    let front = attache.listener("db");
    let sysbench = |port: u16, command: &'static str, extra: &'static [&'static str]| {
        let schema = schema.name.clone();
        async move {
            tokio::process::Command::new("sysbench")
                .args([
                    "oltp_read_write",
                    "--db-driver=mysql",
                    "--mysql-host=127.0.0.1",
                    &format!("--mysql-port={port}"),
                    "--mysql-user=root",
                    &format!("--mysql-db={schema}"),
                    "--tables=2",
                    "--table-size=1000",
                    // Binary-protocol prepared statements (sysbench's
                    // default), moved between server connections.
                    "--db-ps-mode=auto",
                ])
                .args(extra)
                .arg(command)
                .output()
                .await
                .expect("sysbench runs")
        }
    };
    let prepared = sysbench(3306, "prepare", &[]).await;
    assert!(prepared.status.success(), "{prepared:?}");

    let (stop, watcher) = watch_server_connections(attache.pid());
    let run = sysbench(
        front.port(),
        "run",
        &[
            "--threads=50",
            "--events=2000",
            "--time=0",
            "--report-interval=0",
        ],
    )
    .await;
    stop.send(()).unwrap();
    let most = watcher.await.unwrap();
    let output = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{output}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        output.contains("total number of events:              2000"),
        "{output}"
    );
    assert!(
        most <= 5,
        "at most pool_size server connections, saw {most}"
    );
    // Every transaction (18 statements in BEGIN ... COMMIT) went through.
    attache
        .wait_for_metric_at_least("attache_mysql_transactions_total{listener=\"db\"}", 2000.0)
        .await
        .unwrap();
    assert_never_pinned(&attache).await;
}

#[tokio::test]
async fn a_server_connection_killed_mid_query_fails_only_its_client() {
    let schema = Schema::create("mysql_killed").await;
    let other = Schema::create("mysql_killed_other").await;
    // A pool of one per schema: the victim's statements all run on the
    // one connection of its schema's pool, so CONNECTION_ID() names it.
    let attache = Attache::run(&config("      pool_size: 1\n")).await.unwrap();
    let front = attache.listener("db");
    let mut victim = connect(front, &schema.name).await;
    let mut bystander = connect(front, &other.name).await;
    let thread: u64 = victim
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    let sleeping = tokio::spawn(async move {
        let result = victim.query_drop("SELECT SLEEP(60)").await;
        (victim, result)
    });
    // The server kills that connection: while the sleep runs (the server's
    // error) or before it reaches it (attache's). Either way...
    let mut admin = connect(direct(), "test").await;
    admin
        .query_drop(format!("KILL CONNECTION {thread}"))
        .await
        .unwrap();
    let (mut victim, result) = sleeping.await.unwrap();
    let error = result.unwrap_err();
    assert!(
        matches!(server_code(&error), Some(1927 | 2013)),
        "the victim gets the server's or attache's error: {error}"
    );
    // ...the dead connection is not reused: the victim (no transaction, no
    // pinned state) goes on on another one, and the bystander is untouched.
    let one: i64 = victim.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    let two: i64 = bystander.query_first("SELECT 2").await.unwrap().unwrap();
    assert_eq!(two, 2);
    attache
        .wait_for_metric("attache_mysql_server_failures_total{listener=\"db\"}", 1.0)
        .await
        .unwrap();

    // A pinned session loses its state with the connection: it is closed.
    let mut pinned = connect(front, &other.name).await;
    pinned.query_drop("SET @kept = 1").await.unwrap();
    let thread: u64 = pinned
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    let sleeping = tokio::spawn(async move { pinned.query_drop("SELECT SLEEP(60)").await });
    admin
        .query_drop(format!("KILL CONNECTION {thread}"))
        .await
        .unwrap();
    assert!(sleeping.await.unwrap().is_err());
    attache
        .wait_for_metric(
            "attache_connections_closed_total{listener=\"db\",result=\"upstream_unavailable\"}",
            1.0,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_tls_listener_upgrades_in_band_and_checks_client_certificates() {
    let pki = Pki::new();
    let schema = Schema::create("mysql_tls").await;
    let attache = Attache::run(&format!(
        "listeners:\n  - name: db\n    listen: 127.0.0.1:0\n    protocol: mysql\n    upstream: mariadb\n\
         \x20   tls:\n      cert: {}\n      key: {}\n      client_ca: {}\n      allow: {{uris: [\"{ALLOWED_ID}\"]}}\n\
         upstreams:\n  mariadb:\n    endpoints: [\"{MARIADB}\"]\n",
        pki.cert("server"),
        pki.key("server"),
        pki.ca()
    ))
    .await
    .unwrap();
    let front = attache.listener("db");
    let tls = |name: &str| {
        vec![
            "--ssl".to_owned(),
            format!("--ssl-ca={}", pki.ca()),
            format!("--ssl-cert={}", pki.cert(name)),
            format!("--ssl-key={}", pki.key(name)),
            "--ssl-verify-server-cert".to_owned(),
        ]
    };
    let app = tls("app");
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = mariadb_with(
        front,
        &schema.name,
        &app,
        "SELECT 'through TLS', DATABASE()",
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("through TLS\t{}", schema.name));
    attache
        .wait_for_metric(
            r#"attache_tls_handshakes_total{listener="db",result="ok"}"#,
            1.0,
        )
        .await
        .unwrap();

    // A certificate from the right CA with an identity not on the list.
    let intruder = tls("intruder");
    let intruder: Vec<&str> = intruder.iter().map(String::as_str).collect();
    let (ok, _, _) = mariadb_with(front, &schema.name, &intruder, "SELECT 1").await;
    assert!(!ok);
    attache
        .wait_for_metric(
            r#"attache_tls_handshakes_total{listener="db",result="identity_refused"}"#,
            1.0,
        )
        .await
        .unwrap();

    // No TLS at all: refused at login.
    let (ok, _, stderr) = mariadb_with(front, &schema.name, &["--skip-ssl"], "SELECT 1").await;
    assert!(!ok);
    assert!(stderr.contains("accepts TLS connections only"), "{stderr}");
}

#[tokio::test]
async fn tls_to_the_server_starts_in_band_and_presents_attaches_certificate() {
    let pki = Pki::new();
    let server =
        PrivateMariadb::start_tls((&pki.cert("server"), &pki.key("server")), &pki.ca()).await;
    let (ok, _, stderr) = server
        .admin(
            "CREATE USER 'app'@'%' IDENTIFIED BY 's3cret' REQUIRE X509; \
             GRANT ALL ON *.* TO 'app'@'%'; CREATE DATABASE shop",
        )
        .await;
    assert!(ok, "{stderr}");
    let config = |tls: &str| {
        format!(
            "listeners:\n  - name: db\n    listen: 127.0.0.1:0\n    protocol: mysql\n    upstream: private\n\
             \x20   mysql:\n      server_user: app\n      server_password: s3cret\n\
             upstreams:\n  private:\n    endpoints: [\"{}\"]\n{tls}",
            server.address
        )
    };
    let attache = Attache::run(&config(&format!(
        "    tls:\n      ca: {}\n      server_name: localhost\n      cert: {}\n      key: {}\n",
        pki.ca(),
        pki.cert("app"),
        pki.key("app")
    )))
    .await
    .unwrap();
    // The app speaks plaintext to attache on loopback; the server requires
    // TLS and a client certificate, and gets both.
    let mut connection = connect(attache.listener("db"), "shop").await;
    let (user, cipher): (String, String) = connection
        .query_first("SELECT CURRENT_USER(), (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher')")
        .await
        .unwrap()
        .unwrap();
    assert!(user.starts_with("app@"), "{user}");
    assert!(!cipher.is_empty(), "the server connection is TLS");
    attache
        .wait_for_metric_at_least(
            &format!(
                "attache_upstream_tls_handshakes_total{{upstream=\"private\",endpoint=\"{}\",result=\"ok\"}}",
                server.address
            ),
            1.0,
        )
        .await
        .unwrap();

    // Without TLS to it, the same server refuses attache's login, and the
    // client gets the server's own refusal.
    let plain = Attache::run(&config("")).await.unwrap();
    let refused = mysql_async::Conn::new(options(plain.listener("db"), "root", "", Some("shop")))
        .await
        .unwrap_err();
    assert!(
        matches!(server_code(&refused), Some(3159 | 1045)),
        "{refused}"
    );
}

#[tokio::test]
async fn clients_that_lie_lose_only_their_own_connections() {
    let attache = Attache::run(&config("      pool_size: 1\n")).await.unwrap();
    let front = attache.listener("db");

    // A login packet that claims 16 MiB: refused at its header.
    let mut liar = tokio::net::TcpStream::connect(front).await.unwrap();
    read_packet(&mut liar).await;
    liar.write_all(&[0xff, 0xff, 0xff, 0x01]).await.unwrap();
    assert_closed(&mut liar).await;

    // Garbage instead of a handshake response.
    let mut garbage = tokio::net::TcpStream::connect(front).await.unwrap();
    read_packet(&mut garbage).await;
    garbage.write_all(b"\x05\x00\x00\x01hello").await.unwrap();
    let reply = read_packet(&mut garbage).await;
    assert_eq!(reply[4], 0xff, "an ERR packet: {reply:?}");
    assert_closed(&mut garbage).await;

    // Statement ids it never prepared: an error for an execution, nothing
    // for a close, and the session goes on.
    let mut guesser = raw_login(front, "test").await;
    let execute = [0x17, 99, 0, 0, 0, 0, 1, 0, 0, 0];
    write_command(&mut guesser, &execute).await;
    let reply = read_packet(&mut guesser).await;
    assert_eq!(reply[4], 0xff, "an ERR packet: {reply:?}");
    assert_eq!(u16::from_le_bytes([reply[5], reply[6]]), 1243);
    write_command(&mut guesser, &[0x19, 7, 0, 0, 0]).await;
    write_command(&mut guesser, b"\x03SELECT 1").await;
    let reply = read_packet(&mut guesser).await;
    assert_eq!(&reply[3..], [1, 1], "a result set with one column");
    // Its column, an EOF, the row, an EOF.
    for _ in 0..4 {
        read_packet(&mut guesser).await;
    }
    // A statement past what one client may hold (16 MiB of text) is
    // refused before it reaches the server.
    let mut huge = vec![0x16];
    huge.extend_from_slice(b"SELECT 1 -- ");
    huge.resize(17 << 20, b'x');
    write_command(&mut guesser, &huge).await;
    let reply = read_packet(&mut guesser).await;
    assert_eq!(u16::from_le_bytes([reply[5], reply[6]]), 1461, "{reply:?}");

    // Meanwhile an honest client is served.
    let mut honest = connect(front, "test").await;
    let one: i64 = honest.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
}

/// Logs in by hand as root (a loopback client, trusted without a
/// password) into `schema`.
async fn raw_login(front: SocketAddr, schema: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(front).await.unwrap();
    read_packet(&mut stream).await;
    // PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH | CONNECT_WITH_DB.
    let capabilities: u32 = 0x0200 | 0x8000 | 0x0008_0000 | 0x0008;
    let mut response = capabilities.to_le_bytes().to_vec();
    response.extend_from_slice(&(1u32 << 24).to_le_bytes());
    response.push(45);
    response.extend_from_slice(&[0; 23]);
    response.extend_from_slice(b"root\0");
    response.push(0);
    response.extend_from_slice(schema.as_bytes());
    response.push(0);
    response.extend_from_slice(b"mysql_native_password\0");
    let mut packet = (response.len() as u32).to_le_bytes()[..3].to_vec();
    packet.push(1);
    packet.extend_from_slice(&response);
    stream.write_all(&packet).await.unwrap();
    let ok = read_packet(&mut stream).await;
    assert_eq!(ok[4], 0, "an OK packet: {ok:?}");
    stream
}

/// Sends one command, in as many packets as it takes (16 MiB - 1 each,
/// then a shorter one, empty if need be).
async fn write_command(stream: &mut tokio::net::TcpStream, payload: &[u8]) {
    const MAX: usize = 0xff_ffff;
    let mut out = Vec::with_capacity(payload.len() + 8);
    for (sequence, chunk) in payload.chunks(MAX).enumerate() {
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes()[..3]);
        out.push(sequence as u8);
        out.extend_from_slice(chunk);
    }
    if payload.len().is_multiple_of(MAX) {
        out.extend_from_slice(&[0, 0, 0, (payload.len() / MAX) as u8]);
    }
    stream.write_all(&out).await.unwrap();
}

/// Reads one whole packet (header included).
async fn read_packet(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut header = [0; 4];
    stream.read_exact(&mut header).await.unwrap();
    let length =
        usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let mut packet = header.to_vec();
    packet.resize(4 + length, 0);
    stream.read_exact(&mut packet[4..]).await.unwrap();
    packet
}

async fn assert_closed(stream: &mut tokio::net::TcpStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest))
        .await
        .expect("attache closes the connection")
        .ok();
}
