//! The Postgres ambassador's pooling against the real Postgres, with real
//! clients (pgbench, psql, tokio-postgres, sqlx, pgx, psycopg): transaction
//! pooling under load in every query mode within the pool's size, prepared
//! statements following their client across server connections, session state
//! that pins instead of leaking, session-mode cleaning, query timeouts and
//! cancels that reach only their own query, a server connection lost
//! mid-transaction, idle-in-transaction clients, and COPY streaming.

use std::net::SocketAddr;
use std::time::Duration;

use attache_integration::Attache;
use attache_integration::postgres::{
    Database, POSTGRES, connect, connect_to, log_in, psql, wait_until_running,
};
use tokio_postgres::error::SqlState;

fn config(settings: &str) -> String {
    format!(
        "listeners:\n  - name: db\n    listen: 127.0.0.1:0\n    protocol: postgres\n    upstream: postgres\n    postgres:\n{settings}\
         upstreams:\n  postgres:\n    endpoints: [\"{POSTGRES}\"]\n"
    )
}

fn direct() -> SocketAddr {
    POSTGRES.parse().unwrap()
}

/// No client of listener `db` was told a statement name does not exist
/// (SQLSTATE class 26).
async fn assert_no_invalid_statement_name(attache: &Attache) {
    let sample = r#"attache_postgres_errors_total{listener="db",sqlstate_class="26"}"#;
    assert_eq!(
        attache.metric(sample).await.unwrap_or(0.0),
        0.0,
        "no invalid statement name"
    );
}

/// The rows of `table` matching `condition`, and their `n` summed.
async fn count_and_sum(setup: &tokio_postgres::Client, table: &str, condition: &str) -> (i64, i64) {
    let row = setup
        .query_one(
            &format!("select count(*), coalesce(sum(n), 0)::bigint from {table} where {condition}"),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A table of the test's own, `attache_<label>_<pid>` with `columns`, made
/// afresh through a direct connection, which comes back for checks and the
/// final `DROP`.
async fn fresh_table(label: &str, columns: &str) -> (tokio_postgres::Client, String) {
    let table = format!("attache_{label}_{}", std::process::id());
    let setup = connect(direct()).await;
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({columns})"
        ))
        .await
        .unwrap();
    (setup, table)
}

/// A protocol 3.0 startup message for user `postgres`, database `test`.
fn startup_packet() -> Vec<u8> {
    let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
    startup.extend_from_slice(b"user\0postgres\0database\0test\0\0");
    let length = u32::try_from(startup.len()).unwrap().to_be_bytes();
    startup[..4].copy_from_slice(&length);
    startup
}

/// pgbench through `front` on `database`: (exit success, its output).
async fn pgbench(front: SocketAddr, database: &str, arguments: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new("pgbench")
        .args([
            "-h",
            &front.ip().to_string(),
            "-p",
            &front.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(arguments)
        .arg(database)
        .env("PGGSSENCMODE", "disable")
        .env("PGSSLMODE", "disable")
        .output()
        .await
        .expect("pgbench (postgresql-contrib / postgresql-client) runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn pgbench_runs_through_transaction_pooling_in_every_query_mode_within_the_pool() {
    let database = Database::create("pgbench").await;
    let (ok, output) = pgbench(direct(), &database.name, &["-i", "-s", "1", "-q"]).await;
    assert!(ok, "{output}");
    let attache = Attache::run(&config("      pool_size: 5\n")).await.unwrap();
    let front = attache.listener("db");

    // Watch the server side while the clients run.
    let observer = connect(direct()).await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watched = database.name.clone();
    let watcher = tokio::spawn(async move {
        let database = Database { name: watched };
        let mut most = 0;
        loop {
            most = most.max(database.connections(&observer).await);
            if stopped.try_recv().is_ok() {
                std::mem::forget(database);
                return most;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    for mode in ["simple", "extended", "prepared"] {
        // 50 clients, 20 TPC-B-like transactions each, no vacuum first.
        let (ok, output) = pgbench(
            front,
            &database.name,
            &["-n", "-c", "50", "-j", "2", "-t", "20", "-M", mode],
        )
        .await;
        assert!(ok, "pgbench -M {mode}:\n{output}");
        assert!(
            output.contains("number of failed transactions: 0 (0.000%)"),
            "pgbench -M {mode}:\n{output}"
        );
    }
    stop.send(()).unwrap();
    let most = watcher.await.unwrap();
    assert!(
        (1..=5).contains(&most),
        "the server saw {most} connections from a pool of 5"
    );
    // Each transaction: BEGIN, 3 UPDATEs, a SELECT, an INSERT, END; 1000 per mode.
    for (command, count) in [
        ("BEGIN", 3000.0),
        ("UPDATE", 9000.0),
        ("INSERT", 3000.0),
        ("COMMIT", 3000.0),
    ] {
        let sample =
            format!(r#"attache_postgres_queries_total{{listener="db",command="{command}"}}"#);
        assert_eq!(attache.metric(&sample).await.unwrap(), count, "{command}");
    }
    assert_eq!(
        attache
            .metric(r#"attache_postgres_transactions_total{listener="db"}"#)
            .await
            .unwrap(),
        3000.0
    );
    let pool = format!("{}/postgres", database.name);
    let idle = format!(
        r#"attache_postgres_pool_server_connections{{listener="db",pool="{pool}",state="idle"}}"#
    );
    let idle = attache.metric(&idle).await.unwrap();
    assert!((1.0..=5.0).contains(&idle), "{idle} idle");
    let (status, body) = attache.admin_get("/upstreams").await.unwrap();
    assert_eq!(status, 200);
    let upstreams: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pools = upstreams["postgres_pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{body}");
    assert_eq!(pools[0]["pool"], pool.as_str());
    assert_eq!(pools[0]["mode"], "transaction");
    assert_eq!(pools[0]["pool_size"], 5);
    assert_eq!(pools[0]["active"], 0, "{body}");
}

#[tokio::test]
async fn prepared_statements_follow_their_client_across_server_connections() {
    // Two server connections, two statements each at most: twelve clients
    // with five statements each keep re-preparing and closing.
    let attache = Attache::run(&config(
        "      pool_size: 2\n      max_prepared_statements: 2\n",
    ))
    .await
    .unwrap();
    let front = attache.listener("db");
    let mut clients = Vec::new();
    for client_number in 0..12_i32 {
        clients.push(tokio::spawn(async move {
            let client = connect(front).await;
            let mut statements = Vec::new();
            for statement_number in 0..5_i32 {
                let sql = format!("select $1::int * 100 + {statement_number}");
                statements.push(client.prepare(&sql).await.unwrap());
            }
            for round in 0..10_i32 {
                for (statement_number, statement) in (0_i32..).zip(&statements) {
                    let value = client_number * 10 + round;
                    let row = client.query_one(statement, &[&value]).await.unwrap();
                    assert_eq!(row.get::<_, i32>(0), value * 100 + statement_number);
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(
        attache
            .metric(r#"attache_postgres_queries_total{listener="db",command="SELECT"}"#)
            .await
            .unwrap(),
        600.0
    );
    assert_no_invalid_statement_name(&attache).await;
}

#[tokio::test]
async fn sqlx_pools_its_cached_statements_and_transactions_through_transaction_pooling() {
    // sqlx keeps a pool of its own (8 connections here) and prepares each
    // statement once per connection under its own name (sqlx_s_N), then
    // binds it for every query: attache's pool of 2 serves all of them.
    let attache = Attache::run(&config(
        "      pool_size: 2\n      max_prepared_statements: 3\n",
    ))
    .await
    .unwrap();
    let front = attache.listener("db");
    let (setup, table) = fresh_table("sqlx", "worker int, n int").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&format!(
            "postgres://postgres@{}:{}/test?sslmode=disable",
            front.ip(),
            front.port()
        ))
        .await
        .unwrap();
    let mut workers = Vec::new();
    for worker in 0..8_i32 {
        let pool = pool.clone();
        let table = table.clone();
        workers.push(tokio::spawn(async move {
            for n in 0..25_i32 {
                let (sum,): (i32,) = sqlx::query_as("select $1::int + $2::int")
                    .bind(worker)
                    .bind(n)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(sum, worker + n);
                let (text,): (String,) = sqlx::query_as("select $1::text || '-' || $2::text")
                    .bind(worker.to_string())
                    .bind(n.to_string())
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(text, format!("{worker}-{n}"));
                let mut transaction = pool.begin().await.unwrap();
                sqlx::query(&format!("insert into {table} values ($1, $2)"))
                    .bind(worker)
                    .bind(n)
                    .execute(&mut *transaction)
                    .await
                    .unwrap();
                transaction.commit().await.unwrap();
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let (rows, total): (i64, i64) =
        sqlx::query_as(&format!("select count(*), sum(n)::bigint from {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, total), (200, 8 * (0..25).sum::<i64>()));
    pool.close().await;
    assert_no_invalid_statement_name(&attache).await;
    setup
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn pgx_pools_batches_copies_and_evicts_its_statements_through_transaction_pooling() {
    // pgx (Go, v4): a pool of 8 with its statement cache over attache's
    // pool of 2, pipelined batches, binary COPY, a cache of 2 that evicts
    // with `deallocate lrupsc_N_M` queries, the describe cache mode, and a
    // statement prepared and deallocated by name.
    let attache = Attache::run(&config("      pool_size: 2\n")).await.unwrap();
    let front = attache.listener("db");
    let (setup, table) = fresh_table("pgx", "worker int, n int").await;
    let output = tokio::process::Command::new(attache_integration::go_client("pgx").await)
        .arg(format!(
            "host={} port={} user=postgres dbname=test sslmode=disable",
            front.ip(),
            front.port()
        ))
        .arg(&table)
        .output()
        .await
        .unwrap();
    attache_integration::assert_succeeded(&output, "the pgx client");
    assert_eq!(
        count_and_sum(&setup, &table, "worker < 8").await,
        (8 * 20, 8 * (0..20).sum::<i64>())
    );
    assert_eq!(
        count_and_sum(&setup, &table, "worker = 100").await,
        (1000, (0..1000).sum::<i64>())
    );
    assert_no_invalid_statement_name(&attache).await;
    // A cache of 2 over 4 statements in turn evicts on all but the first 2
    // of its 40 queries, then the explicit one: every DEALLOCATE answered.
    assert_eq!(
        attache
            .metric(r#"attache_postgres_queries_total{listener="db",command="OTHER"}"#)
            .await
            .unwrap(),
        38.0 + 1.0
    );
    setup
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// The name tokio-postgres gave `statement` on the wire (`s<N>`), which it
/// shows only in its `Debug` output.
fn statement_name(statement: &tokio_postgres::Statement) -> String {
    let shown = format!("{statement:?}");
    let name = shown
        .split_once("name: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(name, _)| name.to_owned());
    name.unwrap_or_else(|| panic!("no name in {shown}"))
}

#[tokio::test]
async fn deallocate_of_a_prepared_statement_is_answered_in_and_out_of_transactions() {
    // The server knows the client's statements by attache's names, so a
    // DEALLOCATE of the client's name is attache's to answer; afterwards the
    // statement is gone for that client, as it would be on a server.
    let attache = Attache::run(&config("      pool_size: 1\n")).await.unwrap();
    let client = connect(attache.listener("db")).await;
    let first = client.prepare("select $1::int + 1").await.unwrap();
    let second = client.prepare("select $1::int + 2").await.unwrap();
    let third = client.prepare("select $1::int + 3").await.unwrap();
    client
        .simple_query(&format!("DEALLOCATE {}", statement_name(&first)))
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    client
        .simple_query(&format!(
            "deallocate prepare \"{}\";",
            statement_name(&second)
        ))
        .await
        .unwrap();
    let row = client.query_one(&third, &[&39_i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42, "the transaction goes on");
    client.batch_execute("COMMIT").await.unwrap();
    for gone in [&first, &second] {
        let error = client.query_one(gone, &[&1_i32]).await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(&SqlState::INVALID_SQL_STATEMENT_NAME),
            "{error}"
        );
    }
    let row = client.query_one(&third, &[&40_i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 43);
    assert_eq!(
        attache
            .metric(r#"attache_postgres_queries_total{listener="db",command="OTHER"}"#)
            .await
            .unwrap(),
        2.0,
        "two DEALLOCATEs"
    );
}

/// Six psycopg 3 connections (autocommit) that prepare every statement
/// (`prepare_threshold=0`) and keep two each (`prepared_max`, so they keep
/// closing them), with transaction blocks and pipeline mode.
const PSYCOPG_CLIENTS: &str = r#"
import sys, threading, psycopg

def work(number, errors):
    try:
        with psycopg.connect(sys.argv[1], autocommit=True, prepare_threshold=0) as conn:
            conn.prepared_max = 2
            for round in range(10):
                for statement in range(4):
                    sql = f"select %s::int * 10 + {statement}"
                    got = conn.execute(sql, (round,)).fetchone()[0]
                    assert got == round * 10 + statement, (got, round, statement)
                with conn.transaction():
                    assert conn.execute("select %s::int", (number,)).fetchone()[0] == number
            with conn.pipeline():
                cursors = [conn.execute("select %s::int + 1", (i,)) for i in range(5)]
            assert [cursor.fetchone()[0] for cursor in cursors] == [1, 2, 3, 4, 5]
    except Exception as error:
        errors.append(repr(error))

errors = []
threads = [threading.Thread(target=work, args=(number, errors)) for number in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("\n".join(errors))
sys.exit(1 if errors else 0)
"#;

#[tokio::test]
async fn psycopg_prepares_closes_and_pipelines_through_transaction_pooling() {
    let attache = Attache::run(&config("      pool_size: 2\n")).await.unwrap();
    let front = attache.listener("db");
    let output = tokio::process::Command::new("python3")
        .args(["-c", PSYCOPG_CLIENTS])
        .arg(format!(
            "host={} port={} user=postgres dbname=test sslmode=disable gssencmode=disable",
            front.ip(),
            front.port()
        ))
        .output()
        .await
        .unwrap();
    attache_integration::assert_succeeded(&output, "psycopg");
    // Per client: 40 statements, 10 in transactions, 5 in the pipeline.
    for (command, count) in [("SELECT", 6.0 * 55.0), ("BEGIN", 60.0), ("COMMIT", 60.0)] {
        let sample =
            format!(r#"attache_postgres_queries_total{{listener="db",command="{command}"}}"#);
        assert_eq!(attache.metric(&sample).await.unwrap(), count, "{command}");
    }
    assert_no_invalid_statement_name(&attache).await;
}

#[tokio::test]
async fn session_state_pins_instead_of_leaking_to_the_next_client() {
    let attache = Attache::run(&config("      pool_size: 1\n      queue_timeout: 1s\n"))
        .await
        .unwrap();
    let front = attache.listener("db");
    let default_path = connect(direct())
        .await
        .query_one("show search_path", &[])
        .await
        .unwrap()
        .get::<_, String>(0);

    // A session SET pins; the next client on the only server connection
    // finds the default again.
    let setter = connect(front).await;
    setter
        .batch_execute("SET search_path TO attache_elsewhere")
        .await
        .unwrap();
    let path: String = setter
        .query_one("show search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, "attache_elsewhere");
    drop(setter);
    let next = connect(front).await;
    let path: String = next
        .query_one("show search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, default_path);
    drop(next);
    attache
        .wait_for_metric(
            r#"attache_postgres_pinned_total{listener="db",reason="set"}"#,
            1.0,
        )
        .await
        .unwrap();

    // SET LOCAL stays in its transaction and pins nothing.
    let local = connect(front).await;
    local
        .batch_execute("BEGIN; SET LOCAL search_path TO attache_local; COMMIT")
        .await
        .unwrap();
    drop(local);

    // A session advisory lock pins: the pool's only connection stays with
    // its holder, so another client waits and times out.
    let key = i64::from(std::process::id()) + 7_000_000;
    let holder = connect(front).await;
    holder
        .execute("select pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    let (ok, _, stderr) = psql(front, "sslmode=disable", "select 1").await;
    assert!(!ok);
    assert!(
        stderr.contains("no server connection within 1s"),
        "{stderr}"
    );
    // The holder's session ends: DISCARD ALL frees the lock.
    drop(holder);
    let observer = connect(direct()).await;
    let deadline = std::time::Instant::now() + attache_integration::START_TIMEOUT;
    loop {
        let taken: bool = observer
            .query_one("select pg_try_advisory_lock($1)", &[&key])
            .await
            .unwrap()
            .get(0);
        if taken {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        attache
            .metric(r#"attache_postgres_pinned_total{listener="db",reason="advisory_lock"}"#)
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        attache
            .metric(r#"attache_postgres_pinned_total{listener="db",reason="set"}"#)
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test]
async fn session_mode_cleans_a_connection_with_discard_all() {
    let attache = Attache::run(&config("      pool_mode: session\n      pool_size: 1\n"))
        .await
        .unwrap();
    let front = attache.listener("db");
    let first = connect(front).await;
    first
        .batch_execute("SET search_path TO attache_session; PREPARE attache_q AS SELECT 1")
        .await
        .unwrap();
    let backend: i32 = first
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(first);
    let second = connect(front).await;
    let same: i32 = second
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(same, backend, "the pool of one lends the same connection");
    let path: String = second
        .query_one("show search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(path, "attache_session");
    let prepared: i64 = second
        .query_one(
            "select count(*) from pg_prepared_statements where name = 'attache_q'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0);
}

#[tokio::test]
async fn a_query_past_query_timeout_is_cancelled_and_the_session_goes_on() {
    let attache = Attache::run(&config("      query_timeout: 1s\n"))
        .await
        .unwrap();
    let client = connect(attache.listener("db")).await;
    let error = client
        .simple_query("select pg_sleep(30)")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED));
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(
        attache
            .metric(r#"attache_postgres_cancels_total{listener="db",reason="timeout"}"#)
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        attache
            .metric(r#"attache_postgres_errors_total{listener="db",sqlstate_class="57"}"#)
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test]
async fn a_cancel_request_cancels_its_own_query_and_not_another() {
    let attache = Attache::run(&config("      pool_size: 4\n")).await.unwrap();
    let front = attache.listener("db");
    let marker = format!("attache_own_cancel_{}", std::process::id());
    let other = connect(front).await;
    let other_query = {
        let sql = format!("select pg_sleep(3), 'other' /* {marker}_other */");
        tokio::spawn(async move { other.simple_query(&sql).await.map(drop) })
    };
    let mine = connect(front).await;
    let token = mine.cancel_token();
    let my_query = {
        let sql = format!("select pg_sleep(60) /* {marker}_mine */");
        tokio::spawn(async move { mine.simple_query(&sql).await.map(drop) })
    };
    wait_until_running(&format!("{marker}_other")).await;
    wait_until_running(&format!("{marker}_mine")).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(30), my_query)
        .await
        .expect("the query ends once cancelled")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED));
    other_query
        .await
        .unwrap()
        .expect("the other client's query was not cancelled");
    attache
        .wait_for_metric(
            r#"attache_postgres_cancels_total{listener="db",reason="client"}"#,
            1.0,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_server_connection_lost_mid_transaction_fails_only_its_client() {
    let attache = Attache::run(&config("      pool_size: 2\n")).await.unwrap();
    let front = attache.listener("db");
    let victim = connect(front).await;
    victim.batch_execute("BEGIN").await.unwrap();
    let backend: i32 = victim
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let bystander = connect(front).await;
    let killed: bool = connect(direct())
        .await
        .query_one("select pg_terminate_backend($1)", &[&backend])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    // The server's FATAL, then attache's, then the close: an error either way.
    assert!(victim.query_one("select 1", &[]).await.is_err());
    let two: i32 = bystander.query_one("select 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);
    let fresh = connect(front).await;
    let three: i32 = fresh.query_one("select 3", &[]).await.unwrap().get(0);
    assert_eq!(three, 3);
}

#[tokio::test]
async fn a_client_idle_in_a_transaction_is_closed_and_its_connection_not_reused() {
    let attache = Attache::run(&config(
        "      pool_size: 1\n      idle_in_transaction_timeout: 1s\n",
    ))
    .await
    .unwrap();
    let front = attache.listener("db");
    let idle = connect(front).await;
    idle.batch_execute("BEGIN").await.unwrap();
    let backend: i32 = idle
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // The next client gets the pool's only connection once the idle one is closed.
    let next = connect(front).await;
    let other: i32 = next
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        other, backend,
        "a connection left inside a transaction is closed"
    );
    let error = idle.query_one("select 1", &[]).await.unwrap_err();
    assert!(error.is_closed() || error.code().is_some(), "{error:?}");
}

#[tokio::test]
async fn copy_streams_both_ways_byte_for_byte() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use sha2::Digest as _;
    let attache = Attache::run(&config("      pool_size: 2\n")).await.unwrap();
    let front = attache.listener("db");
    let (setup, table) = fresh_table("copy", "line text").await;

    // In: 64 MiB of lines in large chunks, through attache.
    let client = connect(front).await;
    let sink = client
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN"))
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    let mut sent = sha2::Sha256::new();
    for chunk in 0..64 {
        let mut data = Vec::with_capacity(1 << 20);
        let mut line = 0;
        while data.len() < (1 << 20) - 80 {
            data.extend_from_slice(format!("{chunk:04}-{line:08}-{}\n", "x".repeat(48)).as_bytes());
            line += 1;
        }
        sent.update(&data);
        sink.send(bytes::Bytes::from(data)).await.unwrap();
    }
    let rows = sink.finish().await.unwrap();
    assert!(rows > 0);

    // Out: the same bytes back through attache as direct.
    let copy_out = async |address| {
        let client = connect(address).await;
        let stream = client
            .copy_out(&format!(
                "COPY (SELECT line FROM {table} ORDER BY line COLLATE \"C\") TO STDOUT"
            ))
            .await
            .unwrap();
        let mut stream = std::pin::pin!(stream);
        let mut digest = sha2::Sha256::new();
        let mut length = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            length += chunk.len();
            digest.update(&chunk);
        }
        (length, digest.finalize())
    };
    let (through_length, through) = copy_out(front).await;
    let (direct_length, direct_digest) = copy_out(direct()).await;
    assert_eq!(through_length, direct_length);
    assert_eq!(through, direct_digest);
    assert_eq!(through, sent.finalize(), "the lines are written in order");
    setup
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// The most memory the process has held (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test]
async fn a_gibibyte_copy_to_stdout_streams_through_in_flat_memory() {
    use futures_util::StreamExt as _;
    let attache = Attache::run(&config("      pool_size: 1\n")).await.unwrap();
    let client = connect(attache.listener("db")).await;
    client.simple_query("select 1").await.unwrap();
    let before = peak_rss_kib(attache.pid());
    // 1 GiB of small rows, then 256 MiB of 1 MiB rows (forwarded in pieces).
    for (row, rows) in [(1023_usize, 1_usize << 20), (1 << 20, 256)] {
        let stream = client
            .copy_out(&format!(
                "COPY (SELECT repeat('x', {row}) FROM generate_series(1, {rows})) TO STDOUT"
            ))
            .await
            .unwrap();
        let mut stream = std::pin::pin!(stream);
        let mut length = 0;
        while let Some(chunk) = stream.next().await {
            length += chunk.unwrap().len();
        }
        assert_eq!(length, (row + 1) * rows, "every byte arrives");
    }
    let grown = peak_rss_kib(attache.pid()).saturating_sub(before);
    assert!(
        grown < 32 << 10,
        "attache's peak memory grew by {grown} KiB over 1.25 GiB of COPY"
    );
}

#[tokio::test]
async fn a_login_the_server_refuses_reaches_the_client_with_its_error() {
    let attache = Attache::run(&config("      pool_size: 2\n")).await.unwrap();
    let Err(error) = connect_to(attache.listener("db"), "attache_no_such_database").await else {
        panic!("the login succeeded");
    };
    assert_eq!(error.code(), Some(&SqlState::INVALID_CATALOG_NAME));
    // The listener goes on serving.
    let client = connect(attache.listener("db")).await;
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_plaintext_app_reaches_a_postgres_that_requires_tls_and_a_client_certificate() {
    let pki = attache_integration::pki::Pki::new();
    // verify-full: the client certificate's common name is the user.
    pki.issue("ca", "attache_db", &[]);
    let server = attache_integration::postgres::PrivatePostgres::start_tls(
        (&pki.cert("server"), &pki.key("server")),
        &pki.ca(),
        "attache_db",
        "s3cret-db",
    )
    .await;
    let yaml = format!(
        "listeners:\n  - name: db\n    listen: 127.0.0.1:0\n    protocol: postgres\n    upstream: private\n    postgres:\n      pool_size: 2\n      server_user: attache_db\n      server_password: s3cret-db\n      query_timeout: 1s\n\
         upstreams:\n  private:\n    endpoints: [\"localhost:{}\"]\n    tls:\n      ca: {}\n      cert: {}\n      key: {}\n",
        server.port,
        pki.ca(),
        pki.cert("attache_db"),
        pki.key("attache_db"),
    );
    let attache = Attache::run(&yaml).await.unwrap();

    // Straight to the server without TLS: refused by pg_hba.
    let (ok, _, stderr) = attache_integration::postgres::psql_in(
        format!("127.0.0.1:{}", server.port).parse().unwrap(),
        "postgres",
        "sslmode=disable user=attache_db",
        "select 1",
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("no encryption") || stderr.contains("rejects connection"),
        "{stderr}"
    );

    // Through attache in plaintext: TLS 1.3 on the server's side, SCRAM
    // login as the certificate's user.
    let (ok, answer, stderr) = attache_integration::postgres::psql_in(
        attache.listener("db"),
        "postgres",
        "sslmode=disable",
        "select current_user, ssl, version from pg_stat_ssl where pid = pg_backend_pid()",
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(answer, "attache_db|t|TLSv1.3");
    assert_eq!(
        attache
            .metric(r#"attache_upstream_tls_handshakes_total{upstream="private",endpoint="localhost:PORT",result="ok"}"#.replace("PORT", &server.port.to_string()).as_str())
            .await
            .unwrap(),
        1.0
    );

    // query_timeout's cancel request reaches the server, inside TLS as
    // the upstream's connections are (Postgres would also take it in
    // plaintext: this shows the TLS path works, not that it is taken).
    let (ok, _, stderr) = attache_integration::postgres::psql_in(
        attache.listener("db"),
        "postgres",
        "sslmode=disable",
        "select pg_sleep(30)",
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
}

#[tokio::test]
async fn listen_pins_its_session_and_notifications_arrive() {
    use futures_util::StreamExt as _;
    let attache = Attache::run(&config("      pool_size: 2\n")).await.unwrap();
    let front = attache.listener("db");
    let channel = format!("attache_jobs_{}", std::process::id());
    let (listener, mut connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=postgres dbname=test",
            front.ip(),
            front.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    // The connection's messages, notifications among them, into a channel.
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(notification) = message {
                let _ = sender.send(notification.payload().to_owned());
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    // Other clients notify through attache, on whatever connection they get.
    let notifier = connect(front).await;
    for payload in ["first", "second"] {
        notifier
            .execute("select pg_notify($1, $2)", &[&channel, &payload])
            .await
            .unwrap();
    }
    for expected in ["first", "second"] {
        let payload = tokio::time::timeout(Duration::from_secs(30), notifications.recv())
            .await
            .expect("the notification arrives")
            .unwrap();
        assert_eq!(payload, expected);
    }
    assert_eq!(
        attache
            .metric(r#"attache_postgres_pinned_total{listener="db",reason="listen"}"#)
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test]
async fn clients_that_never_start_cost_only_their_own_connections() {
    let attache = Attache::run(&config("      pool_size: 2\n")).await.unwrap();
    let front = attache.listener("db");
    // 1000 connections that send nothing, and one that sends half a packet.
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(tokio::net::TcpStream::connect(front).await.unwrap());
    }
    let mut partial = tokio::net::TcpStream::connect(front).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut partial, &[0, 0, 0, 40, 0, 3])
        .await
        .unwrap();
    // A real client is served meanwhile.
    let client = connect(front).await;
    let answer: String = client
        .query_one("select 'served'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(answer, "served");
    // Garbage after the startup closes only its own connection, with an error.
    let garbage = connect(front).await;
    let mut raw = tokio::net::TcpStream::connect(front).await.unwrap();
    let startup = startup_packet();
    tokio::io::AsyncWriteExt::write_all(&mut raw, &startup)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"Q\x7f\xff\xff\xffgarbage")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer),
    )
    .await
    .expect("attache closes the connection");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("08P01") && text.contains("over the limit"),
        "{text}"
    );
    let still: i32 = garbage.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(still, 7);
    drop(silent);
}

#[tokio::test]
async fn users_log_in_with_scram_and_wrong_or_unknown_ones_are_refused() {
    // A password in the clear, and a verifier as Postgres stores it.
    let verifier = postgres_protocol::password::scram_sha_256(b"r3port-pass");
    let attache = Attache::run(&config(&format!(
        "      pool_size: 2\n      server_user: postgres\n      users:\n        app: s3cret-app\n        reporting: \"{verifier}\"\n"
    )))
    .await
    .unwrap();
    let front = attache.listener("db");
    let login = async |user: &str, password: &str| {
        log_in(front, user, password)
            .await?
            .query_one("select current_user", &[])
            .await
    };
    let row = login("app", "s3cret-app").await.unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "postgres",
        "the server login is server_user's"
    );
    login("reporting", "r3port-pass").await.unwrap();
    for (user, password) in [
        ("app", "wrong"),
        ("reporting", "s3cret-app"),
        ("nobody", "x"),
    ] {
        let error = login(user, password).await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{user}: {error:?}"
        );
    }
    // libpq too, with the password from the environment.
    let output = tokio::process::Command::new("psql")
        .args([
            "-X",
            "-At",
            "-d",
            &format!(
                "host=127.0.0.1 port={} user=app dbname=test sslmode=disable",
                front.port()
            ),
            "-c",
            "select 'psql logged in'",
        ])
        .env("PGPASSWORD", "s3cret-app")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "psql logged in"
    );
    // The passwords never show in /config.
    let (_, shown) = attache.admin_get("/config").await.unwrap();
    assert!(
        !shown.contains("s3cret-app") && !shown.contains(&verifier),
        "{shown}"
    );
    assert!(
        shown.contains("\"app\":{\"secret\":\"<redacted>\""),
        "{shown}"
    );
}

#[tokio::test]
async fn users_from_a_file_log_in_and_a_user_has_its_own_query_timeout() {
    let directory = tempfile::tempdir().unwrap();
    let userlist = directory.path().join("userlist.txt");
    let verifier = postgres_protocol::password::scram_sha_256(b"filed-pass");
    std::fs::write(
        &userlist,
        format!(
            "; PgBouncer's auth_file format\n\"filed\" \"{verifier}\"\n\"plain\" \"plain-pass\"\n"
        ),
    )
    .unwrap();
    let settings = format!(
        "      server_user: postgres\n      users_file: {}\n      users:\n        batch: {{password: batch-pass, query_timeout: 1s}}\n",
        userlist.display()
    );
    let attache = Attache::run(&config(&settings)).await.unwrap();
    let front = attache.listener("db");
    let login = async |user: &str, password: &str| log_in(front, user, password).await;
    // The file's users log in; a wrong password does not.
    let filed = login("filed", "filed-pass").await.unwrap();
    login("plain", "plain-pass").await.unwrap();
    let error = login("filed", "plain-pass").await.err().unwrap();
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD));

    // batch's own query_timeout cancels its statement; the listener has
    // none, so filed's runs to its end.
    let batch = login("batch", "batch-pass").await.unwrap();
    let error = batch.simple_query("select pg_sleep(30)").await.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED));
    let one: i32 = batch.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    filed.simple_query("select pg_sleep(1.5)").await.unwrap();
    assert_eq!(
        attache
            .metric(r#"attache_postgres_cancels_total{listener="db",reason="timeout"}"#)
            .await
            .unwrap(),
        1.0
    );

    // A bad line keeps attache from starting, and says which line.
    std::fs::write(&userlist, "\"filed\" \"x\"\nplain plain-pass\n").unwrap();
    let error = Attache::run(&config(&settings))
        .await
        .err()
        .expect("attache refuses to start");
    assert!(
        error.to_string().contains("postgres.users_file: line 2 of"),
        "{error}"
    );
}

#[tokio::test]
async fn without_users_a_client_from_another_address_is_refused() {
    // The client's address comes from a PROXY header a trusted balancer
    // (here, the test on loopback) sends first.
    let attache = Attache::run(&config("      pool_size: 1\n").replace(
        "    postgres:\n",
        "    proxy_protocol: {trusted: [127.0.0.1/32]}\n    postgres:\n",
    ))
    .await
    .unwrap();
    let front = attache.listener("db");
    let startup = startup_packet();
    let answer = async |source: &str| {
        let mut stream = tokio::net::TcpStream::connect(front).await.unwrap();
        let header = format!("PROXY TCP4 {source} 127.0.0.1 50000 5432\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut stream, header.as_bytes())
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, &startup)
            .await
            .unwrap();
        // The first byte, then (for a refusal) the rest until attache closes.
        let mut answer = vec![0; 1];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut answer)
            .await
            .unwrap();
        if answer[0] == b'E' {
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer).await;
        }
        String::from_utf8_lossy(&answer).into_owned()
    };
    // `R` (AuthenticationOk) for loopback, FATAL 28000 for another address.
    assert_eq!(answer("127.0.0.1").await, "R");
    let refused = answer("10.1.2.3").await;
    assert!(
        refused.starts_with('E') && refused.contains("C28000"),
        "{refused:?}"
    );
    attache
        .wait_for_log_text("no users are configured")
        .await
        .unwrap();
}

/// Waits until the server's connections to `database` are within `range`.
async fn wait_for_server_connections(database: &Database, range: std::ops::RangeInclusive<i64>) {
    let observer = connect(direct()).await;
    let deadline = std::time::Instant::now() + attache_integration::START_TIMEOUT;
    loop {
        let now = database.connections(&observer).await;
        if range.contains(&now) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} has {now} server connections, expected {range:?}",
            database.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_pool_keeps_min_idle_connections_and_closes_idle_ones_past_their_timeout() {
    let warm = Database::create("min_idle").await;
    let attache = Attache::run(&config("      pool_size: 4\n      min_idle: 2\n"))
        .await
        .unwrap();
    let client = connect_to(attache.listener("db"), &warm.name)
        .await
        .unwrap();
    client.simple_query("select 1").await.unwrap();
    // The pool's maintenance opens more and keeps at least two idle,
    // within its size.
    let idle = format!(
        r#"attache_postgres_pool_server_connections{{listener="db",pool="{}/postgres",state="idle"}}"#,
        warm.name
    );
    attache.wait_for_metric_at_least(&idle, 2.0).await.unwrap();
    wait_for_server_connections(&warm, 2..=4).await;
    drop(client);

    let cold = Database::create("idle_timeout").await;
    let attache = Attache::run(&config(
        "      pool_size: 4\n      server_idle_timeout: 1s\n",
    ))
    .await
    .unwrap();
    let client = connect_to(attache.listener("db"), &cold.name)
        .await
        .unwrap();
    client.simple_query("select 1").await.unwrap();
    // Idle past server_idle_timeout: closed by the maintenance.
    wait_for_server_connections(&cold, 0..=0).await;
    let idle = format!(
        r#"attache_postgres_pool_server_connections{{listener="db",pool="{}/postgres",state="idle"}}"#,
        cold.name
    );
    attache.wait_for_metric(&idle, 0.0).await.unwrap();
    // The client goes on: its next transaction gets a new connection.
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}
