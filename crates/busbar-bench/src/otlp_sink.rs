//! A collector stand-in for `blog --trace-export`: accepts OTLP/HTTP trace exports on
//! loopback and only counts them, so the figures measure what exporting costs the
//! services, not what a collector costs.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use axum::{Router, body::Bytes, extract::State, http::header, routing::post};

pub struct OtlpSink {
    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub url: String,
    counts: Arc<[AtomicU64; 2]>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpSink {
    pub async fn start() -> anyhow::Result<OtlpSink> {
        let counts: Arc<[AtomicU64; 2]> = Arc::default();
        let app = Router::new().route("/v1/traces", post(receive)).with_state(counts.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(OtlpSink { url, counts, task })
    }

    /// Exports received, and their bytes.
    pub fn received(&self) -> (u64, u64) {
        (self.counts[0].load(Ordering::Relaxed), self.counts[1].load(Ordering::Relaxed))
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An empty body is an empty `ExportTraceServiceResponse` in either encoding.
async fn receive(
    State(counts): State<Arc<[AtomicU64; 2]>>,
    body: Bytes,
) -> ([(header::HeaderName, &'static str); 1], ()) {
    counts[0].fetch_add(1, Ordering::Relaxed);
    counts[1].fetch_add(body.len() as u64, Ordering::Relaxed);
    ([(header::CONTENT_TYPE, "application/x-protobuf")], ())
}
