//! A `kube::Client` for a lock: kube's own client with `TCP_NODELAY` on its connections.
//!
//! kube 5 builds its client on a `HttpConnector` that leaves Nagle's algorithm on (kube-rs/kube#2056):
//! after the TLS handshake the client writes its Finished message and then the request, and the request
//! waits for the server's delayed ACK, 40 ms on Linux, on every new connection (a lock's first request,
//! and a waiter's acquisition after its watch took the pooled connection). Go, and so client-go, sets
//! no-delay by default. This is the same stack as `kube::Client::try_from(config)` (rustls with the
//! configuration's CA, its credentials, its default namespace), minus kube's connect and read timeouts
//! (mpsync bounds every call itself) and its proxy support (a `proxy-url` is refused here).
//!
//! It needs `hyper-util` (features `client-legacy`, `http1`, `tokio`) and `tower` besides kube with
//! `rustls-tls`.

use std::error::Error;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use tower::{BoxError, ServiceBuilder};

pub fn client(config: kube::Config) -> Result<kube::Client, Box<dyn Error>> {
    if let Some(proxy) = &config.proxy_url {
        return Err(format!("this client does not use proxies (proxy-url {proxy})").into());
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(http)?;
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .map_err(BoxError::from)
        .service(HyperClient::builder(TokioExecutor::new()).build(https));
    Ok(kube::Client::new(service, config.default_namespace))
}
