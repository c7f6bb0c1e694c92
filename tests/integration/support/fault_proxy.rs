//! An HTTP proxy in front of the emulator that answers with injected errors, for faults no
//! real server produces on demand.

/// An HTTP proxy in front of the emulator that answers the first requests with injected
/// errors (503, then 429 rate limits), then forwards everything. For faults no real server
/// produces on demand.
pub struct FaultProxy {
    pub port: u16,
    pub faults_served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Answers a request (method, path) itself instead of forwarding it: `Some((status, body))`.
pub type Rule = std::sync::Arc<dyn Fn(&str, &str) -> Option<(u16, String)> + Send + Sync>;

impl FaultProxy {
    pub async fn start(target: String, faults: Vec<u16>) -> Self {
        Self::start_with(target, faults, std::sync::Arc::new(|_: &str, _: &str| None)).await
    }

    /// The same, with a rule that may answer any request itself (after the queued faults).
    pub async fn start_with(target: String, faults: Vec<u16>, rule: Rule) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let faults = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(faults)));
        let client = reqwest::Client::new();
        let counter = served.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let (client, target, faults, counter, rule) =
                    (client.clone(), target.clone(), faults.clone(), counter.clone(), rule.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 65536];
                    let header_end = loop {
                        let Ok(n) = sock.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let request_line = lines.next().unwrap_or_default().to_string();
                    let mut parts = request_line.split(' ');
                    let (method, path) =
                        (parts.next().unwrap_or("GET").to_string(), parts.next().unwrap_or("/").to_string());
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
                        .collect();
                    let length: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < header_end + length {
                        let Ok(n) = sock.read(&mut chunk).await else { return };
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = buf[header_end..].to_vec();
                    let fault = faults.lock().unwrap().pop_front();
                    let ruled = if fault.is_none() { rule(&method, &path) } else { None };
                    let (status, content_type, payload) = if let Some((code, body)) = ruled {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        (code, "application/json".to_string(), body.into_bytes())
                    } else if let Some(code) = fault {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let reason = if code == 429 { "rateLimitExceeded" } else { "backendError" };
                        let body = format!(
                            r#"{{"error":{{"code":{code},"message":"injected","errors":[{{"reason":"{reason}","message":"injected"}}]}}}}"#
                        );
                        (code, "application/json".to_string(), body.into_bytes())
                    } else {
                        let mut req = client.request(method.parse().unwrap(), format!("{target}{path}"));
                        for (k, v) in &headers {
                            if !["host", "content-length", "connection", "transfer-encoding"]
                                .contains(&k.to_ascii_lowercase().as_str())
                            {
                                req = req.header(k, v);
                            }
                        }
                        match req.body(body).send().await {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                let ct = resp
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("application/json")
                                    .to_string();
                                (status, ct, resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
                            }
                            Err(_) => (502, "text/plain".into(), b"bad gateway".to_vec()),
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        payload.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&payload).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Self { port, faults_served: served }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
