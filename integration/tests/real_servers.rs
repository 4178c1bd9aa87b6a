//! Real clients through attache to the real servers on this machine: Redis
//! (6379), MariaDB (3306, root, database `test`) and Postgres (5432, trust,
//! database `test`). Each test uses its own keys and tables.

use attache_integration::{Attache, mariadb_pool, servers};

async fn ambassador(upstream: &str) -> Attache {
    Attache::run(&format!(
        "listeners:\n  - name: db\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: db\n\
         upstreams:\n  db:\n    endpoints: [\"{upstream}\"]\n"
    ))
    .await
    .unwrap()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>())
}

#[tokio::test]
async fn redis_ping_set_get_and_a_one_mib_value() {
    let attache = ambassador("127.0.0.1:6379").await;
    let client = redis::Client::open(format!("redis://{}/", attache.listener("db"))).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();

    let pong: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(pong, "PONG");
    let key = unique("attache_test");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("value")
        .query_async(&mut connection)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value, "value");

    let big = servers::random_bytes(1024 * 1024, 5);
    let big_key = format!("{key}_big");
    let _: () = redis::cmd("SET")
        .arg(&big_key)
        .arg(&big)
        .query_async(&mut connection)
        .await
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET")
        .arg(&big_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(servers::sha256_hex(&back), servers::sha256_hex(&big));
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .arg(&big_key)
        .query_async(&mut connection)
        .await
        .unwrap();
}

#[tokio::test]
async fn mariadb_select_create_insert_and_read_back() {
    use mysql_async::prelude::Queryable;

    let attache = ambassador("127.0.0.1:3306").await;
    let address = attache.listener("db");
    let pool = mariadb_pool(address);
    let mut connection = pool.get_conn().await.unwrap();

    let one: Option<i64> = connection.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    let table = unique("attache_rows");
    connection
        .query_drop(format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(64))"
        ))
        .await
        .unwrap();
    connection
        .exec_batch(
            format!("INSERT INTO {table} (id, name) VALUES (?, ?)"),
            (1..=100).map(|id| (id, format!("row {id}"))),
        )
        .await
        .unwrap();
    let rows: Vec<(i32, String)> = connection
        .query(format!("SELECT id, name FROM {table} ORDER BY id"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 100);
    assert_eq!(rows[41], (42, "row 42".to_owned()));
    connection
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
    drop(connection);
    pool.disconnect().await.unwrap();
}

#[tokio::test]
async fn postgres_select_create_insert_and_read_back() {
    let attache = ambassador("127.0.0.1:5432").await;
    let address = attache.listener("db");
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=postgres dbname=test",
            address.ip(),
            address.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let driver = tokio::spawn(connection);

    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let table = unique("attache_rows");
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, name TEXT)"
        ))
        .await
        .unwrap();
    let insert = client
        .prepare(&format!("INSERT INTO {table} (id, name) VALUES ($1, $2)"))
        .await
        .unwrap();
    for id in 1..=100i32 {
        client
            .execute(&insert, &[&id, &format!("row {id}")])
            .await
            .unwrap();
    }
    let rows = client
        .query(&format!("SELECT id, name FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 100);
    assert_eq!(
        (rows[41].get::<_, i32>(0), rows[41].get::<_, String>(1)),
        (42, "row 42".to_owned())
    );
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    drop(client);
    driver.await.unwrap().unwrap();
}
