//! Raw TCP exchanges for tests that must send what no HTTP client library would: garbage
//! bytes, malformed request lines, oversized heads. They talk straight to a listener's socket.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `bytes` to `addr` and reads what comes back until the server closes the connection
/// (or the test deadline passes). Returns the text read, lossily decoded.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect for a raw exchange");
    // The server may answer and close before it has read everything; a failed write is then
    // expected, and the answer is still there to read.
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(crate::deadline(), async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server neither answered nor closed within the deadline; got so far: {answer:?}");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of the first response line in `answer` (`HTTP/1.1 400 Bad Request`).
pub fn status_of(answer: &str) -> Option<u16> {
    let line = answer.lines().next()?;
    let mut words = line.split_whitespace();
    words.next().filter(|version| version.starts_with("HTTP/"))?;
    words.next()?.parse().ok()
}
