//! `max_connections`: the N+1st connection is closed at once and counted,
//! the first N keep working.

use std::time::Duration;

use attache_integration::{Attache, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    let mut echoed = vec![0; message.len()];
    stream.read_exact(&mut echoed).await.unwrap();
    echoed
}

#[tokio::test]
async fn the_connection_over_the_limit_is_refused_and_counted() {
    let upstream = servers::echo().await;
    let attache = Attache::run(&format!(
        "listeners:\n  - name: capped\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: echo\n    max_connections: 3\n\
         upstreams:\n  echo:\n    endpoints: [\"{upstream}\"]\n"
    ))
    .await
    .unwrap();
    let front = attache.listener("capped");

    let mut admitted = Vec::new();
    for index in 0..3u8 {
        let mut stream = TcpStream::connect(front).await.unwrap();
        assert_eq!(round_trip(&mut stream, &[index; 10]).await, [index; 10]);
        admitted.push(stream);
    }
    let mut refused = TcpStream::connect(front).await.unwrap();
    let _ = refused.write_all(b"hello?").await;
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(20), refused.read_to_end(&mut received)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "refused connection is closed: {read:?}"
    );
    assert!(received.is_empty());

    for (index, stream) in admitted.iter_mut().enumerate() {
        let message = [index as u8 + 100; 5];
        assert_eq!(
            round_trip(stream, &message).await,
            message,
            "admitted connection {index} still works"
        );
    }
    let metrics = attache.metrics().await.unwrap();
    assert_eq!(
        metrics["attache_connections_refused_total{listener=\"capped\",reason=\"max_connections\"}"],
        1.0
    );
    assert_eq!(
        metrics["attache_connections_active{listener=\"capped\"}"],
        3.0
    );

    // A slot frees when an admitted connection closes.
    drop(admitted.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let active = attache
            .metric("attache_connections_active{listener=\"capped\"}")
            .await
            .unwrap();
        if active == 2.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "active connections never dropped to 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = TcpStream::connect(front).await.unwrap();
    assert_eq!(round_trip(&mut again, b"room again").await, b"room again");
}
