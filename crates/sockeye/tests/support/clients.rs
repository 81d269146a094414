//! One client scenario, either front end: the tokio `ClientBuilder` or the blocking
//! `sockeye::sync::ClientBuilder`, with the same settings. And a server that tells each
//! client what it received. Included with `#[path]` by the redirect and proxy tests.
// Each including test binary uses a different subset of this module.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sockeye::http::{Request, Response};
use sockeye::{Error, Proxy};

/// Every wait of a test is bounded by this.
pub const GUARD: Duration = Duration::from_secs(20);

/// The front end a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Tokio,
    Sync,
}

pub const FRONTS: [Front; 2] = [Front::Tokio, Front::Sync];

/// The client builder's settings, for either front end.
#[derive(Clone)]
pub struct Settings {
    pub max_redirects: Option<usize>,
    pub headers: Vec<(&'static str, String)>,
    pub open_timeout: Duration,
    /// `None`: the builder's default, the environment's proxy.
    pub proxy: Option<Proxy>,
    #[cfg(feature = "tls")]
    pub ca: Option<sockeye::tls::CertificateDer<'static>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_redirects: None,
            headers: Vec::new(),
            open_timeout: Duration::from_secs(5),
            proxy: Some(Proxy::none()),
            #[cfg(feature = "tls")]
            ca: None,
        }
    }
}

/// What the client saw: the server's first message and the last request it sent.
#[derive(Debug)]
pub struct Opened {
    pub greeting: String,
    pub request: Request<()>,
}

/// Applies `Settings` to a client builder of either front end.
macro_rules! configure {
    ($builder:expr, $s:expr) => {{
        let s: &Settings = $s;
        let mut b = $builder.open_timeout(Some(s.open_timeout));
        if let Some(n) = s.max_redirects {
            b = b.max_redirects(n);
        }
        if let Some(p) = &s.proxy {
            b = b.proxy(p.clone());
        }
        for (name, value) in &s.headers {
            b = b.header(name, value).unwrap();
        }
        #[cfg(feature = "tls")]
        if let Some(ca) = &s.ca {
            b = b.add_root_certificate(ca.clone());
        }
        b
    }};
}

/// Connects with `front`, reads the server's greeting and closes; within `GUARD`.
pub async fn open(front: Front, settings: &Settings, uri: &str) -> Result<Opened, Error> {
    let uri = uri.to_owned();
    let settings = settings.clone();
    let run = async move {
        match front {
            Front::Tokio => {
                let ws = configure!(sockeye::ClientBuilder::default(), &settings)
                    .connect(&uri)
                    .await?;
                let greeting = ws.recv().await?.expect("a greeting");
                let request = clone_request(ws.request());
                ws.close(sockeye::CloseCode::NORMAL, "").await?;
                Ok(Opened {
                    greeting: greeting.as_text().expect("text").to_owned(),
                    request,
                })
            }
            Front::Sync => tokio::task::spawn_blocking(move || {
                let ws =
                    configure!(sockeye::sync::ClientBuilder::default(), &settings).connect(&uri)?;
                let greeting = ws.recv_timeout(GUARD)?.expect("a greeting");
                let request = clone_request(ws.request());
                ws.close(sockeye::CloseCode::NORMAL, "")?;
                Ok(Opened {
                    greeting: greeting.as_text().expect("text").to_owned(),
                    request,
                })
            })
            .await
            .unwrap(),
        }
    };
    tokio::time::timeout(GUARD, run)
        .await
        .expect("test took too long")
}

/// The greeting of a connection that must open.
pub async fn greeting(front: Front, settings: &Settings, uri: &str) -> String {
    match open(front, settings, uri).await {
        Ok(opened) => opened.greeting,
        Err(e) => panic!("{front:?} {uri}: {e}"),
    }
}

fn clone_request(r: &Request<()>) -> Request<()> {
    let mut c = Request::new(());
    *c.uri_mut() = r.uri().clone();
    *c.headers_mut() = r.headers().clone();
    c
}

/// A `process_request` hook's answers, by path and query.
pub type Answers = Arc<dyn Fn(&str) -> Option<Response<sockeye::bytes::Bytes>> + Send + Sync>;

/// A tokio server (on `builder`: TLS or not) that records every handshake request's path
/// and query and answers it with `answers` (if it gives an answer); connections that open
/// are greeted with `path?query auth=... cookie=... x-kept=...` (`-` for a missing header).
pub async fn greeter(
    builder: sockeye::ServerBuilder,
    answers: Answers,
) -> (sockeye::Server, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let builder = builder.process_request(move |req| {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        log.lock().unwrap().push(pq.clone());
        answers(&pq)
    });
    let server = builder
        .serve("127.0.0.1:0", |ws: sockeye::ServerConnection| async move {
            let req = ws.request();
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .map_or("-".to_owned(), |v| v.to_str().unwrap_or("?").to_owned())
            };
            let greeting = format!(
                "{} auth={} cookie={} x-kept={}",
                req.uri().path_and_query().map_or("/", |p| p.as_str()),
                header("authorization"),
                header("cookie"),
                header("x-kept"),
            );
            ws.send(greeting).await?;
            while ws.recv().await?.is_some() {}
            Ok(())
        })
        .await
        .unwrap();
    (server, seen)
}

/// A redirect answer.
pub fn redirect(status: u16, location: &str) -> Response<sockeye::bytes::Bytes> {
    let status = sockeye::http::StatusCode::from_u16(status).unwrap();
    let mut response = sockeye::respond(status, "moved");
    response
        .headers_mut()
        .insert("location", location.parse().unwrap());
    response
}
