//! What every HTTP client of orch (the exchanges, BigQuery and its token endpoint) shares: a
//! body is read only up to a limit, and a failed request says what happened.
//!
//! An endpoint answering 3 GB of JSON must not grow `orch serve` to 3 GB: bodies are read chunk
//! by chunk and refused past their limit, before the rest arrives.

use bytes::{Bytes, BytesMut};

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {limit} bytes, the most orch reads from this endpoint")]
    TooLarge { limit: usize },
    /// The connection failed or timed out mid-body: worth another try.
    #[error("the answer broke off: {0}")]
    Broken(String),
}

/// The body of `response`, refused as soon as it holds more than `limit` bytes.
pub async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Bytes, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Broken(describe(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A request error with its causes: reqwest's own message names only the URL, not that the
/// server timed out or refused the connection.
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server that answers every connection with `head` then `body_bytes` of `x`, slowly
    /// when asked, and never closes early.
    async fn server(head: String, body_bytes: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let head = head.clone();
                tokio::spawn(async move {
                    let mut request = [0_u8; 1024];
                    let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
                    let _ = socket.write_all(head.as_bytes()).await;
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut sent = 0;
                    while sent < body_bytes {
                        let n = chunk.len().min(body_bytes - sent);
                        if socket.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        sent += n;
                    }
                });
            }
        });
        format!("http://{address}/")
    }

    #[tokio::test]
    async fn a_body_past_its_limit_is_refused_before_it_is_read_whole() {
        // No Content-Length: the limit holds while streaming.
        let url = server(
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string(),
            64 * 1024 * 1024,
        )
        .await;
        let response = reqwest::get(&url).await.expect("answer");
        let error = read_body(response, 1024 * 1024)
            .await
            .expect_err("too large");
        assert!(matches!(error, BodyError::TooLarge { limit } if limit == 1024 * 1024));

        // A Content-Length past the limit is refused without reading.
        let url = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 3000000000\r\n\r\n".to_string(),
            10,
        )
        .await;
        let response = reqwest::get(&url).await.expect("answer");
        assert!(matches!(
            read_body(response, 1024).await,
            Err(BodyError::TooLarge { .. })
        ));

        let url = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_string(),
            5,
        )
        .await;
        let response = reqwest::get(&url).await.expect("answer");
        assert_eq!(read_body(response, 1024).await.expect("body"), "xxxxx");
    }

    #[tokio::test]
    async fn a_hung_server_is_described_as_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        // Accepts, never answers.
        let _held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(200))
            .build()
            .expect("client");
        let error = client
            .get(format!("http://{address}/"))
            .send()
            .await
            .expect_err("times out");
        assert!(
            describe(&error).starts_with("timed out"),
            "{}",
            describe(&error)
        );
    }
}
