//! An in-process revalidation endpoint (a small axum server on a free port) whose answer the
//! test sets and changes, and which records what it received. Stands in for the Next.js
//! route `/api/revalidate` wherever a test needs to see or refuse the worker's POSTs.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, Method, StatusCode, Uri};
use axum::response::IntoResponse;

/// What an [`Endpoint`] answers, to every request (any method, any path).
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 `ok`; the request is recorded as a [`Delivery`].
    Ok,
    /// This status with an empty body; nothing is recorded as delivered.
    Status(u16),
    /// This status with this body; nothing is recorded as delivered.
    Body(u16, String),
    /// 302 to this location; nothing is recorded as delivered.
    Redirect(String),
    /// No answer for an hour (longer than any test and the worker's request timeout), then
    /// as [`Answer::Ok`].
    Hang,
}

/// A request an [`Endpoint`] answered 200.
#[derive(Clone, Debug)]
pub struct Delivery<T = ()> {
    /// When it arrived.
    pub at: Instant,
    /// The `tags` of its JSON body (none if the body is not such JSON).
    pub tags: Vec<String>,
    /// What the endpoint's observer returned before the answer went out
    /// ([`Endpoint::observing`]).
    pub observed: T,
}

/// An in-process HTTP endpoint: answers as [`Endpoint::set`] last said, counts and records
/// every request, and keeps each request it answered 200 as a [`Delivery`]. The server runs
/// on the current tokio runtime until the test ends. Clones share the same state.
#[derive(Clone)]
pub struct Endpoint<T = ()> {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// `{base}/api/revalidate`: the URL to give the worker (`CDC_REVALIDATE_URLS`).
    pub url: String,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
    /// (method, path) of every request.
    seen: Arc<Mutex<Vec<(String, String)>>>,
    delivered: Arc<Mutex<Vec<Delivery<T>>>>,
}

impl Endpoint {
    /// Listens on a free port and answers `answer` until told otherwise.
    pub async fn start(answer: Answer) -> Endpoint {
        Endpoint::observing(answer, |_| async {}).await
    }
}

impl<T: Clone + Send + 'static> Endpoint<T> {
    /// Like [`Endpoint::start`], and before it answers a request 200 it awaits
    /// `observe(tags)` and keeps the result in the [`Delivery`]: e.g. what a page rendered
    /// right after that revalidation would show.
    pub async fn observing<F, Fut>(answer: Answer, observe: F) -> Endpoint<T>
    where
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let e = Endpoint {
            url: format!("{base}/api/revalidate"),
            base,
            answer: Arc::new(Mutex::new(answer)),
            requests: Arc::default(),
            seen: Arc::default(),
            delivered: Arc::default(),
        };
        let state = e.clone();
        let observe = Arc::new(observe);
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: String| {
            let (state, observe) = (state.clone(), observe.clone());
            async move {
                let at = Instant::now();
                state.requests.fetch_add(1, Ordering::SeqCst);
                state
                    .seen
                    .lock()
                    .unwrap()
                    .push((method.to_string(), uri.path().to_string()));
                let answer = state.answer.lock().unwrap().clone();
                match answer {
                    Answer::Status(code) => {
                        return StatusCode::from_u16(code).unwrap().into_response()
                    }
                    Answer::Body(code, body) => {
                        return (StatusCode::from_u16(code).unwrap(), body).into_response()
                    }
                    Answer::Redirect(to) => {
                        return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
                    }
                    Answer::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
                    Answer::Ok => {}
                }
                let tags = tags_of(&body);
                let observed = observe(tags.clone()).await;
                state
                    .delivered
                    .lock()
                    .unwrap()
                    .push(Delivery { at, tags, observed });
                (StatusCode::OK, "ok").into_response()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        e
    }

    /// What it answers from now on.
    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// How many requests arrived, whatever the answer.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// (method, path) of every request so far.
    pub fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// Every request answered 200 so far, in order of arrival.
    pub fn deliveries(&self) -> Vec<Delivery<T>> {
        self.delivered.lock().unwrap().clone()
    }

    /// Every tag delivered so far (answered 200), in order of arrival, repeats included.
    pub fn tags(&self) -> Vec<String> {
        let delivered = self.delivered.lock().unwrap();
        delivered.iter().flat_map(|d| d.tags.clone()).collect()
    }

    /// Whether `tag` was delivered.
    pub fn got(&self, tag: &str) -> bool {
        self.count(tag) > 0
    }

    /// How many times `tag` was delivered.
    pub fn count(&self, tag: &str) -> usize {
        let delivered = self.delivered.lock().unwrap();
        delivered
            .iter()
            .flat_map(|d| &d.tags)
            .filter(|t| *t == tag)
            .count()
    }

    /// When `tag` was first delivered.
    pub fn first(&self, tag: &str) -> Option<Instant> {
        let delivered = self.delivered.lock().unwrap();
        delivered
            .iter()
            .find(|d| d.tags.iter().any(|t| t == tag))
            .map(|d| d.at)
    }
}

/// The `tags` array of a revalidation body (`{"tags": [...]}`), empty if there is none.
fn tags_of(body: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect()
}

/// A revalidation URL nothing answers ([`super::CLOSED_PORT`], 9): the worker enqueues its tags in the
/// outbox and keeps retrying them.
pub const CLOSED_PORT_URL: &str = "http://127.0.0.1:9/api/revalidate";

/// The environment that has a worker revalidate at `urls` (comma-separated) with requests
/// signed by `secret`. Extend it with `.to_vec()` and `push`.
pub const fn revalidate_env<'a>(urls: &'a str, secret: &'a str) -> [(&'static str, &'a str); 2] {
    [
        ("CDC_REVALIDATE_URLS", urls),
        ("CDC_REVALIDATE_SECRET", secret),
    ]
}
