//! A stand-in for the daemon in unit tests: answers one request on a Unix
//! socket with a canned status and body, and hands back the request it got,
//! so a test checks both what a command sent and what it printed.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// Answers the first request on `socket` with `status` and `body`, and
/// returns the request's head and body as text.
pub async fn answer_once(
    socket: &Path,
    status: &'static str,
    body: String,
) -> tokio::task::JoinHandle<String> {
    answer_once_with(socket, status, "", body).await
}

/// [`answer_once`] with `headers` (`name: value\r\n` lines) added to the
/// answer's head.
pub async fn answer_once_with(
    socket: &Path,
    status: &'static str,
    headers: &'static str,
    body: String,
) -> tokio::task::JoinHandle<String> {
    let listener = UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head, then as much body as Content-Length announces.
        let complete = |r: &[u8]| {
            let text = String::from_utf8_lossy(r);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                return false;
            };
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, n)| n.trim().parse::<usize>().unwrap());
            body.len() >= length
        };
        while !complete(&request) {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "client hung up mid-request");
            request.extend_from_slice(&buf[..n]);
        }
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(response.as_bytes()).await.unwrap();
        String::from_utf8(request).unwrap()
    })
}
