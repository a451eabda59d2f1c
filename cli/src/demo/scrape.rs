//! Reading a proxy's `/metrics`: fetch it and parse the OpenMetrics text into
//! samples the live view can add up (the parser is `weft_api::exposition::parse`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use weft_api::exposition::{Sample, parse};

/// Fetches metrics over HTTP/1.1 with keep-alive.
#[derive(Clone, Debug)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Scraper {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Scraper {
    /// The samples of the proxy whose admin server is at `admin`, or `None`
    /// when it does not answer within a second.
    pub async fn scrape(&self, admin: SocketAddr) -> Option<Vec<Sample>> {
        let uri = format!("http://{admin}/metrics").parse().ok()?;
        let fetch = async {
            let rsp = self.client.get(uri).await.ok()?;
            let body = rsp.into_body().collect().await.ok()?.to_bytes();
            Some(parse(std::str::from_utf8(&body).ok()?))
        };
        tokio::time::timeout(Duration::from_secs(1), fetch)
            .await
            .ok()
            .flatten()
    }
}
