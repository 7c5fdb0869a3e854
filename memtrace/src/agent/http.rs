//! A small HTTP/1.1 server on tokio for the agent's few GET endpoints.
//!
//! The server only speaks the protocol. It parses request heads and hands each request, with a
//! oneshot sender for the answer, to the agent's event loop over a channel ([`Exchange`]); the
//! event loop owns all state and answers. Nothing here is shared with it.
//!
//! Deliberately small: GET and HEAD only, no request bodies, no chunked responses, no TLS.
//! Keep-alive and pipelining work, because Prometheus and `go tool pprof` reuse connections.
//! Every limit (head size, connection count, timeouts) exists so that no client, slow or
//! hostile, can hold the agent's memory or sockets for long.

use std::{
    fmt::Write as _,
    future::poll_fn,
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::AsyncWrite,
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, Semaphore},
    time::{timeout, timeout_at, Instant},
};

/// The methods the server accepts; everything else is answered with 405 without asking the
/// event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    /// Answered like GET; the server drops the body.
    Head,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Percent-decoded, without the query and fragment; always starts with `/`.
    pub path: String,
    /// Percent-decoded `name=value` pairs in order (`+` decoded as a space); a bare `name`
    /// has an empty value.
    pub query: Vec<(String, String)>,
}

impl Request {
    /// The value of the first query parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(parameter, _)| parameter == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Sent after `Content-Type` and `Content-Length`; the server adds `Connection` itself.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Response {
    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: TEXT,
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    /// 200 with `value` as JSON, or 500 if it cannot be serialized (a map with non-string
    /// keys, say).
    pub fn json(value: &impl serde::Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::bytes("application/json", body),
            Err(error) => {
                log::error!("cannot encode an HTTP response as JSON: {error}");
                Response::text(
                    500,
                    format!("cannot encode the response as JSON: {error}\n"),
                )
            }
        }
    }

    /// 200 with `body` as it is.
    pub fn bytes(content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status: 200,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// 404 `not found: {what}`.
    pub fn not_found(what: &str) -> Response {
        Response::text(404, format!("not found: {what}\n"))
    }

    /// 400 with `message`.
    pub fn bad_request(message: &str) -> Response {
        Response::text(400, format!("{message}\n"))
    }

    /// 503 with `message`.
    pub fn unavailable(message: &str) -> Response {
        Response::text(503, format!("{message}\n"))
    }

    /// Adds a header, such as `Content-Disposition` or `Cache-Control`.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// A request and where to send its response. The event loop must answer every request it
/// receives; dropping the sender makes the server answer 503.
pub type Exchange = (Request, oneshot::Sender<Response>);

/// The limits of one server; constants except in tests, which shorten the timeouts.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    /// A request head (request line and headers) larger than this is answered with 431.
    max_head_bytes: usize,
    /// How long a kept-alive connection may wait for its next request.
    idle_timeout: Duration,
    /// How long a client may take to send a whole request head once it started, and to
    /// start the first one after connecting.
    head_timeout: Duration,
    /// How long a response write may make no progress (a client that stopped reading).
    write_stall_timeout: Duration,
    /// How long to drain a closing connection's input, see [`close_gracefully`].
    linger: Duration,
}

const LIMITS: Limits = Limits {
    max_connections: 64,
    max_head_bytes: 16 * 1024,
    idle_timeout: Duration::from_secs(60),
    head_timeout: Duration::from_secs(10),
    write_stall_timeout: Duration::from_secs(30),
    linger: Duration::from_secs(2),
};

/// How long to wait before accepting again after an accept error such as EMFILE, which would
/// otherwise repeat at once, forever.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Input drained from a closing connection before giving up on it.
const LINGER_MAX_BYTES: usize = 256 * 1024;

const SHUTTING_DOWN: &str = "memtrace agent is shutting down";

/// Serves until the listener fails; each connection in its own task.
///
/// Transient accept errors (out of file descriptors, say) are logged once per burst and
/// retried every 100 ms; only errors that mean the listener itself is unusable end the
/// server. Connections beyond 64 are answered with 503 and closed.
pub async fn serve(listener: TcpListener, requests: mpsc::Sender<Exchange>) {
    serve_with(listener, requests, LIMITS).await;
}

async fn serve_with(listener: TcpListener, requests: mpsc::Sender<Exchange>, limits: Limits) {
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut accept_failing = false;
    let mut refusing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => {
                if accept_failing {
                    log::info!("accepting HTTP connections again");
                    accept_failing = false;
                }
                stream
            }
            // The failure of one connection that arrived, not of the listener.
            Err(error) if is_connection_error(&error) => continue,
            Err(error) if is_listener_broken(&error) => {
                log::error!("the HTTP listener failed: {error}");
                return;
            }
            Err(error) => {
                if !accept_failing {
                    log::warn!("cannot accept HTTP connections: {error} (retrying every 100 ms)");
                    accept_failing = true;
                }
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let Ok(slot) = connection_slots.clone().try_acquire_owned() else {
            if !refusing {
                log::warn!(
                    "refusing HTTP connections: {} are open already",
                    limits.max_connections
                );
                refusing = true;
            }
            refuse(stream);
            continue;
        };
        refusing = false;
        let requests = requests.clone();
        tokio::spawn(async move {
            serve_connection(stream, &requests, limits).await;
            drop(slot);
        });
    }
}

/// Errors accept(2) reports for a connection that failed before it was accepted; Linux passes
/// pending network errors of the new socket on this way, and says to simply retry.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// Errors that retrying cannot fix: the listening socket itself is gone or not listening.
fn is_listener_broken(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT)
    )
}

/// Answers a connection over the limit with 503 and closes it, without waiting: a full
/// server must not spend a task, or any time, on it.
fn refuse(stream: TcpStream) {
    const BODY: &str = "too many connections\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: {TEXT}\r\nContent-Length: {}\r\n\
         Retry-After: 1\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    // A new connection's send buffer is empty, so this short write goes through whole or,
    // if the client is already gone, not at all.
    let _ = stream.try_write(response.as_bytes());
}

/// Serves the requests of one connection, in order, until either side closes it.
async fn serve_connection(stream: TcpStream, requests: &mpsc::Sender<Exchange>, limits: Limits) {
    // Responses are written whole in one vectored write when they fit; no need to wait for
    // Nagle's algorithm on the last segment.
    let _ = stream.set_nodelay(true);
    let mut inbox = Inbox::new(limits.max_head_bytes);
    let mut first_request = true;
    loop {
        // A new connection gets no idle allowance: one that sends nothing holds a slot for
        // nothing.
        let wait_limit = if first_request {
            limits.head_timeout
        } else {
            limits.idle_timeout
        };
        first_request = false;
        let head_length = match inbox
            .receive_head(&stream, wait_limit, limits.head_timeout)
            .await
        {
            HeadOutcome::Complete(length) => length,
            HeadOutcome::Closed | HeadOutcome::Idle | HeadOutcome::Failed => return,
            HeadOutcome::TooLarge => {
                let response = Response::text(431, "request head too large\n");
                answer_and_close(stream, &response, false, limits).await;
                return;
            }
            HeadOutcome::TimedOut => {
                let response = Response::text(408, "request head not received in time\n");
                answer_and_close(stream, &response, false, limits).await;
                return;
            }
        };
        let verdict = judge(&inbox.received()[..head_length]);
        inbox.consume(head_length);
        let (response, head_only, persistence) = match verdict {
            Verdict::Dispatch {
                request,
                persistence,
            } => {
                let head_only = request.method == Method::Head;
                (
                    ask_event_loop(requests, request).await,
                    head_only,
                    persistence,
                )
            }
            Verdict::Answer {
                response,
                persistence,
            } => (response, false, persistence),
        };
        if persistence == Persistence::Close {
            answer_and_close(stream, &response, head_only, limits).await;
            return;
        }
        if send_response(&stream, &response, head_only, persistence, limits)
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn ask_event_loop(requests: &mpsc::Sender<Exchange>, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    if requests.send((request, reply)).await.is_err() {
        return Response::unavailable(SHUTTING_DOWN);
    }
    answer
        .await
        .unwrap_or_else(|_| Response::unavailable(SHUTTING_DOWN))
}

async fn send_response(
    stream: &TcpStream,
    response: &Response,
    head_only: bool,
    persistence: Persistence,
    limits: Limits,
) -> io::Result<()> {
    let head = response_head(response, persistence);
    let body = if head_only {
        &[][..]
    } else {
        &response.body[..]
    };
    write_all(stream, &head, body, limits.write_stall_timeout).await
}

async fn answer_and_close(stream: TcpStream, response: &Response, head_only: bool, limits: Limits) {
    if send_response(&stream, response, head_only, Persistence::Close, limits)
        .await
        .is_ok()
    {
        close_gracefully(stream, limits.linger).await;
    }
}

/// Closes a connection without destroying the response just written: closing a socket with
/// unread input makes the kernel send a reset, which can discard the response before the
/// client reads it (a request body the server never read, say). So: end our side first, then
/// read and discard until the client closes too, for a little while.
async fn close_gracefully(mut stream: TcpStream, linger: Duration) {
    let _ = poll_fn(|context| Pin::new(&mut stream).poll_shutdown(context)).await;
    let mut discard = [0; 4096];
    let _ = timeout(linger, async {
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES {
            match read_some(&stream, &mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
    })
    .await;
}

/// Whether the connection stays open after a response, and whether to say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persistence {
    Close,
    /// HTTP/1.1's default; nothing to announce.
    KeepAlive,
    /// An HTTP/1.0 client asked for keep-alive and must be told it got it.
    AnnouncedKeepAlive,
}

/// What to do with one received request head.
#[derive(Debug)]
enum Verdict {
    /// Hand the request to the event loop.
    Dispatch {
        request: Request,
        persistence: Persistence,
    },
    /// Answer without the event loop (an error).
    Answer {
        response: Response,
        persistence: Persistence,
    },
}

impl Verdict {
    /// For malformed requests: after those, the server cannot trust its idea of where the
    /// next request starts.
    fn reject(status: u16, message: &str) -> Verdict {
        Verdict::Answer {
            response: Response::text(status, format!("{message}\n")),
            persistence: Persistence::Close,
        }
    }
}

/// Parses a request head, `head` ending with its blank line.
fn judge(head: &[u8]) -> Verdict {
    // Every line ends with CRLF. A bare LF is rejected rather than taken as a line end: the
    // head's end was found by looking for CRLF CRLF, and the two must agree on where lines are.
    let lines: Option<Vec<&[u8]>> = head
        .strip_suffix(b"\r\n")
        .unwrap_or(head)
        .split_inclusive(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r\n"))
        .collect();
    let Some(lines) = lines else {
        return Verdict::reject(400, "malformed request head");
    };
    let mut lines = lines.into_iter();
    let Some(request_line) = lines.next().and_then(|line| std::str::from_utf8(line).ok()) else {
        return Verdict::reject(400, "malformed request line");
    };
    let Some(RequestLine {
        method,
        target,
        minor_version,
    }) = parse_request_line(request_line)
    else {
        return Verdict::reject(400, "malformed request line");
    };
    let Some(minor_version) = minor_version else {
        return Verdict::reject(505, "only HTTP/1.0 and HTTP/1.1 are supported");
    };

    let mut wants_close = false;
    let mut wants_keep_alive = false;
    let mut has_body = false;
    for line in lines {
        let Some(Header { name, value }) = parse_header(line) else {
            return Verdict::reject(400, "malformed header");
        };
        if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&byte| byte == b',') {
                let option = option.trim_ascii();
                wants_close |= option.eq_ignore_ascii_case(b"close");
                wants_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Verdict::reject(400, "malformed Content-Length");
            }
            has_body |= value.iter().any(|&digit| digit != b'0');
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_body = true;
        }
    }

    let method = match method {
        "GET" => Some(Method::Get),
        "HEAD" => Some(Method::Head),
        _ => None,
    };
    if has_body {
        // The server never reads bodies, so it cannot find the next request: close.
        return match method {
            Some(_) => Verdict::reject(400, "requests with a body are not supported"),
            None => Verdict::Answer {
                response: method_not_allowed(),
                persistence: Persistence::Close,
            },
        };
    }
    let persistence = if wants_close || (minor_version == 0 && !wants_keep_alive) {
        Persistence::Close
    } else if minor_version == 0 {
        Persistence::AnnouncedKeepAlive
    } else {
        Persistence::KeepAlive
    };
    let Some(method) = method else {
        return Verdict::Answer {
            response: method_not_allowed(),
            persistence,
        };
    };
    let Some((path, query)) = parse_target(target) else {
        return Verdict::reject(400, "malformed request target");
    };
    Verdict::Dispatch {
        request: Request {
            method,
            path,
            query,
        },
        persistence,
    }
}

fn method_not_allowed() -> Response {
    Response::text(405, "only GET and HEAD are supported\n").with_header("Allow", "GET, HEAD")
}

struct RequestLine<'a> {
    method: &'a str,
    target: &'a str,
    /// None for a well-formed version other than 1.0 and 1.1.
    minor_version: Option<u8>,
}

/// `METHOD SP request-target SP HTTP/x.y`, with single spaces and no control characters.
fn parse_request_line(line: &str) -> Option<RequestLine<'_>> {
    if line.chars().any(char::is_control) {
        return None;
    }
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || target.is_empty() || !is_token(method.as_bytes()) {
        return None;
    }
    let minor_version = match version.as_bytes() {
        b"HTTP/1.1" => Some(1),
        b"HTTP/1.0" => Some(0),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            None
        }
        _ => return None,
    };
    Some(RequestLine {
        method,
        target,
        minor_version,
    })
}

struct Header<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

/// `name: value`. Values are kept as bytes: they may hold non-UTF-8 text the server has no
/// reason to reject.
fn parse_header(line: &[u8]) -> Option<Header<'_>> {
    let colon = line.iter().position(|&byte| byte == b':')?;
    // A name must be a token, which also rules out the obsolete line folding (a line that
    // starts with whitespace) and whitespace before the colon, both of which requests can be
    // smuggled through.
    let name = &line[..colon];
    let value = line[colon + 1..].trim_ascii();
    if !is_token(name)
        || value
            .iter()
            .any(|&byte| byte.is_ascii_control() && byte != b'\t')
    {
        return None;
    }
    Some(Header { name, value })
}

/// RFC 9110's `token`: one or more of the characters allowed in methods and header names.
fn is_token(text: &[u8]) -> bool {
    !text.is_empty()
        && text
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// Splits a request target into its decoded path and query; None if it is malformed.
fn parse_target(target: &str) -> Option<(String, Vec<(String, String)>)> {
    // Clients do not send fragments, but a careless one might.
    let target = target.split('#').next().unwrap_or_default();
    // Servers must accept the absolute form (`http://host/path`) too: skip to the path.
    let lowercase_prefix = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let origin_form = if let Some(scheme_length) = ["http://", "https://"]
        .iter()
        .find(|scheme| lowercase_prefix.starts_with(*scheme))
        .map(|scheme| scheme.len())
    {
        let after_authority = &target[scheme_length..];
        match after_authority.find(['/', '?']) {
            Some(start) if after_authority[start..].starts_with('/') => {
                after_authority[start..].to_owned()
            }
            Some(start) => format!("/{}", &after_authority[start..]),
            None => "/".to_owned(),
        }
    } else {
        target.to_owned()
    };
    if !origin_form.starts_with('/') {
        return None;
    }
    let (raw_path, raw_query) = origin_form
        .split_once('?')
        .unwrap_or((origin_form.as_str(), ""));
    let path = percent_decode(raw_path, false)?;
    let query = raw_query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(name, true)?, percent_decode(value, true)?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((path, query))
}

/// Decodes `%XX` escapes (and, in a query, `+` as a space); None for a broken escape or text
/// that is not UTF-8 once decoded.
fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let high = hex_digit_value(*bytes.get(index + 1)?)?;
                let low = hex_digit_value(*bytes.get(index + 2)?)?;
                decoded.push(high << 4 | low);
                index += 3;
            }
            b'+' if plus_is_space => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

fn hex_digit_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

/// The status line and headers of `response`, with the blank line that ends them.
fn response_head(response: &Response, persistence: Persistence) -> Vec<u8> {
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        reason_phrase(response.status),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        // A value built from request input must not be able to end the head early.
        let value = value.replace(['\r', '\n'], " ");
        let _ = write!(head, "{name}: {value}\r\n");
    }
    match persistence {
        Persistence::Close => head.push_str("Connection: close\r\n"),
        Persistence::AnnouncedKeepAlive => head.push_str("Connection: keep-alive\r\n"),
        Persistence::KeepAlive => {}
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        // The reason phrase is optional; clients go by the number.
        _ => "",
    }
}

/// How waiting for a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum HeadOutcome {
    /// The head is the first this many bytes of the inbox, blank line included.
    Complete(usize),
    /// The client closed the connection (or reset it, or it failed) before a whole head.
    Closed,
    Failed,
    /// No request started in time.
    Idle,
    /// A request started but its head did not arrive in time.
    TimedOut,
    TooLarge,
}

/// Bytes received on a connection and not yet consumed: at most one request head, plus
/// whatever a pipelining client sent after it.
struct Inbox {
    buffer: Box<[u8]>,
    filled: usize,
}

impl Inbox {
    fn new(capacity: usize) -> Inbox {
        Inbox {
            buffer: vec![0; capacity].into_boxed_slice(),
            filled: 0,
        }
    }

    fn received(&self) -> &[u8] {
        &self.buffer[..self.filled]
    }

    fn consume(&mut self, length: usize) {
        self.buffer.copy_within(length..self.filled, 0);
        self.filled -= length;
    }

    /// Reads until the inbox holds a whole request head. The client gets `wait_limit` to
    /// start one and then `head_timeout` from its first byte to finish it.
    async fn receive_head(
        &mut self,
        stream: &TcpStream,
        wait_limit: Duration,
        head_timeout: Duration,
    ) -> HeadOutcome {
        let wait_deadline = Instant::now() + wait_limit;
        let mut head_deadline = None;
        let mut searched = 0;
        loop {
            if head_deadline.is_none() {
                // RFC 9112 asks servers to ignore blank lines before a request line (some
                // clients send a stray CRLF after a body).
                let blank = self
                    .received()
                    .iter()
                    .take_while(|&&byte| byte == b'\r' || byte == b'\n')
                    .count();
                if blank > 0 {
                    self.consume(blank);
                }
                if self.filled > 0 {
                    head_deadline = Some(Instant::now() + head_timeout);
                }
            }
            if let Some(end) = find_head_end(self.received(), searched) {
                return HeadOutcome::Complete(end);
            }
            // The terminator may straddle this read and the next.
            searched = self.filled.saturating_sub(3);
            if self.filled == self.buffer.len() {
                return HeadOutcome::TooLarge;
            }
            let deadline = head_deadline.unwrap_or(wait_deadline);
            match timeout_at(deadline, read_some(stream, &mut self.buffer[self.filled..])).await {
                Err(_elapsed) if head_deadline.is_some() => return HeadOutcome::TimedOut,
                Err(_elapsed) => return HeadOutcome::Idle,
                Ok(Ok(0)) => return HeadOutcome::Closed,
                Ok(Ok(read)) => self.filled += read,
                Ok(Err(_)) => return HeadOutcome::Failed,
            }
        }
    }
}

/// The length of the head at the start of `received`, searching from `from`.
fn find_head_end(received: &[u8], from: usize) -> Option<usize> {
    received
        .get(from..)?
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|position| from + position + 4)
}

/// Reads what is available, waiting until something is; 0 at the end of input.
async fn read_some(stream: &TcpStream, into: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(into) {
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            result => return result,
        }
    }
}

/// Writes `head` then `body`, in as few system calls as the socket allows; fails if the
/// client stops reading for `stall_timeout`.
async fn write_all(
    stream: &TcpStream,
    head: &[u8],
    body: &[u8],
    stall_timeout: Duration,
) -> io::Result<()> {
    let mut slices = [IoSlice::new(head), IoSlice::new(body)];
    let mut unsent: &mut [IoSlice<'_>] = &mut slices;
    // Drops empty slices at the front.
    IoSlice::advance_slices(&mut unsent, 0);
    while !unsent.is_empty() {
        timeout(stall_timeout, stream.writable())
            .await
            .map_err(|_elapsed| io::Error::from(io::ErrorKind::TimedOut))??;
        match stream.try_write_vectored(unsent) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut unsent, written),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {address:?}: not an IP address and port such as 127.0.0.1:9464 or [::]:9464")]
    Unparsable { address: String },
    #[error("cannot listen on {address}: {}", describe_listen_error(.error))]
    Listen {
        address: SocketAddr,
        error: io::Error,
    },
}

/// The reason in a [`BindError`] message: lowercase, without the `(os error N)` that
/// `io::Error` appends, and with a hint where one helps.
fn describe_listen_error(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::AddrInUse => "address already in use".to_owned(),
        io::ErrorKind::AddrNotAvailable => "no such address on this host".to_owned(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".to_owned()
        }
        _ => {
            let text = error.to_string();
            let text = text.split(" (os error").next().unwrap_or_default();
            let mut characters = text.chars();
            characters
                .next()
                .map(|first| first.to_lowercase().chain(characters).collect())
                .unwrap_or_default()
        }
    }
}

/// Binds a listening socket on `address` (`IP:PORT`), non-blocking so that
/// `tokio::net::TcpListener::from_std` can take it over inside a runtime.
pub fn bind(address: &str) -> Result<std::net::TcpListener, BindError> {
    let socket_address: SocketAddr = address.trim().parse().map_err(|_| BindError::Unparsable {
        address: address.to_owned(),
    })?;
    let listen_error = |error| BindError::Listen {
        address: socket_address,
        error,
    };
    // The standard library sets SO_REUSEADDR on Unix before binding, so a restarted agent can
    // listen again at once, even while connections of its previous run sit in TIME_WAIT
    // (a test below checks this).
    let listener = std::net::TcpListener::bind(socket_address).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        os::fd::AsRawFd,
    };

    use super::*;

    /// The real limits, except timeouts short enough to test.
    const TEST_LIMITS: Limits = Limits {
        idle_timeout: Duration::from_millis(300),
        head_timeout: Duration::from_millis(300),
        ..LIMITS
    };

    /// Starts a server on an ephemeral port with [`fake_event_loop`] behind it.
    async fn start(limits: Limits) -> SocketAddr {
        let (requests, receiver) = mpsc::channel(8);
        tokio::spawn(fake_event_loop(receiver));
        start_with(limits, requests)
    }

    fn start_with(limits: Limits, requests: mpsc::Sender<Exchange>) -> SocketAddr {
        let listener = TcpListener::from_std(bind("127.0.0.1:0").unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve_with(listener, requests, limits));
        address
    }

    async fn fake_event_loop(mut requests: mpsc::Receiver<Exchange>) {
        while let Some((request, reply)) = requests.recv().await {
            let response = match request.path.as_str() {
                "/drop" => continue,
                "/headers" => Response::bytes("application/octet-stream", vec![1, 2, 3])
                    .with_header("Content-Disposition", "attachment; filename=\"x\"\r\nX: y"),
                path if path.starts_with("/echo") => Response::text(
                    200,
                    format!(
                        "{:?} {path} {:?} flag={:?}",
                        request.method,
                        request.query,
                        request.param("flag")
                    ),
                ),
                path => Response::not_found(path),
            };
            let _ = reply.send(response);
        }
    }

    /// Runs a blocking client off the runtime's only thread, which the server needs.
    async fn client<T: Send + 'static>(run: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(run).await.unwrap()
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(header, _)| header.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        }
    }

    struct Client {
        stream: std::net::TcpStream,
        pending: Vec<u8>,
    }

    impl Client {
        fn connect(address: SocketAddr) -> Client {
            let stream = std::net::TcpStream::connect(address).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            Client {
                stream,
                pending: Vec::new(),
            }
        }

        fn send(&mut self, raw: &[u8]) {
            self.stream.write_all(raw).unwrap();
        }

        /// Reads more input; 0 at its end (or on a reset).
        fn fill(&mut self) -> usize {
            let mut chunk = [0; 4096];
            let read = self.stream.read(&mut chunk).unwrap_or(0);
            self.pending.extend_from_slice(&chunk[..read]);
            read
        }

        /// One response, framed by its Content-Length (none for HEAD).
        fn response(&mut self, head_only: bool) -> Reply {
            let head_end = loop {
                if let Some(end) = find_head_end(&self.pending, 0) {
                    break end;
                }
                assert!(self.fill() > 0, "connection closed before a response head");
            };
            let head = String::from_utf8(self.pending[..head_end].to_vec()).unwrap();
            self.pending.drain(..head_end);
            let mut lines = head.trim_end().split("\r\n");
            let status_line = lines.next().unwrap();
            assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
            let status = status_line[9..12].parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .map(|line| {
                    let (name, value) = line.split_once(": ").unwrap();
                    (name.to_owned(), value.to_owned())
                })
                .collect();
            let length: usize = headers
                .iter()
                .find(|(name, _)| name == "Content-Length")
                .expect("Content-Length")
                .1
                .parse()
                .unwrap();
            let body_length = if head_only { 0 } else { length };
            while self.pending.len() < body_length {
                assert!(self.fill() > 0, "connection closed inside a body");
            }
            let body = String::from_utf8_lossy(&self.pending[..body_length]).into_owned();
            self.pending.drain(..body_length);
            Reply {
                status,
                headers,
                body,
            }
        }

        /// Whether the server closed the connection with nothing more to read.
        fn closed(&mut self) -> bool {
            self.pending.is_empty() && self.fill() == 0
        }
    }

    /// Sends `raw` on a new connection and reads one response.
    async fn request(address: SocketAddr, raw: &'static str) -> Reply {
        client(move || {
            let mut client = Client::connect(address);
            client.send(raw.as_bytes());
            client.response(raw.starts_with("HEAD "))
        })
        .await
    }

    #[tokio::test]
    async fn get_decodes_path_and_query() {
        let address = start(TEST_LIMITS).await;
        let reply = request(
            address,
            "GET /echo/a%20b+c/%C3%BC?seconds=30&name=two+words%21&flag&&x=%3D#fragment HTTP/1.1\r\n\
             Host: localhost\r\n\r\n",
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("Content-Type"), Some(TEXT));
        assert_eq!(reply.header("Connection"), None);
        assert_eq!(
            reply.body,
            "Get /echo/a b+c/ü [(\"seconds\", \"30\"), (\"name\", \"two words!\"), \
             (\"flag\", \"\"), (\"x\", \"=\")] flag=Some(\"\")"
        );

        let reply = request(
            address,
            "GET HTTP://localhost:9464?a=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body, "not found: /\n");
    }

    #[tokio::test]
    async fn head_sends_headers_without_body() {
        let address = start(TEST_LIMITS).await;
        let (head, get) = client(move || {
            let mut client = Client::connect(address);
            client.send(b"HEAD /echo HTTP/1.1\r\n\r\n");
            let head = client.response(true);
            // The next response must start right after the head: no body was sent.
            client.send(b"GET /echo HTTP/1.1\r\n\r\n");
            (head, client.response(false))
        })
        .await;
        assert_eq!(head.status, 200);
        // The length of the body a GET would have had: "Head /echo [] flag=None".
        assert_eq!(head.header("Content-Length"), Some("23"));
        assert_eq!(get.body, "Get /echo [] flag=None");

        // Also when the connection closes after the response.
        let (head, closed) = client(move || {
            let mut client = Client::connect(address);
            client.send(b"HEAD /echo HTTP/1.0\r\n\r\n");
            (client.response(true), client.closed())
        })
        .await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("Connection"), Some("close"));
        assert!(closed, "no body after a HEAD response");
    }

    #[tokio::test]
    async fn other_methods_get_405_and_keep_the_connection() {
        let address = start(TEST_LIMITS).await;
        let (delete, get) = client(move || {
            let mut client = Client::connect(address);
            client.send(b"DELETE /echo HTTP/1.1\r\n\r\n");
            let delete = client.response(false);
            client.send(b"GET /echo HTTP/1.1\r\n\r\n");
            (delete, client.response(false))
        })
        .await;
        assert_eq!(delete.status, 405);
        assert_eq!(delete.header("Allow"), Some("GET, HEAD"));
        assert_eq!(get.status, 200);

        let post = request(
            address,
            "POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await;
        assert_eq!(post.status, 405);
        assert_eq!(post.header("Allow"), Some("GET, HEAD"));
        assert_eq!(post.header("Connection"), Some("close"));
    }

    #[tokio::test]
    async fn passes_the_event_loops_status_and_headers_through() {
        let address = start(TEST_LIMITS).await;
        let missing = request(address, "GET /nothing%2Fhere HTTP/1.1\r\n\r\n").await;
        assert_eq!(missing.status, 404);
        assert_eq!(missing.body, "not found: /nothing/here\n");

        let reply = request(address, "GET /headers HTTP/1.1\r\n\r\n").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("Content-Type"),
            Some("application/octet-stream")
        );
        assert_eq!(reply.header("Content-Length"), Some("3"));
        // The CR LF in the value must not have started a header of its own.
        assert_eq!(
            reply.header("Content-Disposition"),
            Some("attachment; filename=\"x\"  X: y")
        );
        assert_eq!(reply.header("X"), None);
        assert_eq!(reply.body.as_bytes(), [1, 2, 3]);
    }

    #[tokio::test]
    async fn keeps_connections_alive() {
        let address = start(TEST_LIMITS).await;
        let replies = client(move || {
            let mut client = Client::connect(address);
            client.send(b"GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n");
            let first = client.response(false);
            client.send(b"GET /echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n");
            let second = client.response(false);
            // Pipelined, with a stray blank line between the requests.
            client.send(b"GET /echo?n=3 HTTP/1.1\r\n\r\n\r\nGET /echo?n=4 HTTP/1.1\r\n\r\n");
            let third = client.response(false);
            let fourth = client.response(false);
            [first, second, third, fourth]
        })
        .await;
        for (n, reply) in (1..).zip(&replies) {
            assert_eq!(reply.status, 200);
            assert_eq!(
                reply.body,
                format!("Get /echo [(\"n\", \"{n}\")] flag=None")
            );
        }
    }

    #[tokio::test]
    async fn closes_when_asked() {
        let address = start(TEST_LIMITS).await;
        let (reply, closed) = client(move || {
            let mut client = Client::connect(address);
            client.send(b"GET /echo HTTP/1.1\r\nConnection: Keep-Alive, Close\r\n\r\n");
            (client.response(false), client.closed())
        })
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(closed);

        // HTTP/1.0 closes by default...
        let (reply, closed) = client(move || {
            let mut client = Client::connect(address);
            client.send(b"GET /echo HTTP/1.0\r\n\r\n");
            (client.response(false), client.closed())
        })
        .await;
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(closed);

        // ...unless asked to keep the connection, and then says it did.
        let replies = client(move || {
            let mut client = Client::connect(address);
            client.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
            let first = client.response(false);
            client.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
            [first, client.response(false)]
        })
        .await;
        for reply in replies {
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("Connection"), Some("keep-alive"));
        }
    }

    #[tokio::test]
    async fn oversized_head_gets_431() {
        let address = start(TEST_LIMITS).await;
        let (reply, closed) = client(move || {
            let mut client = Client::connect(address);
            let mut raw = b"GET /echo HTTP/1.1\r\n".to_vec();
            while raw.len() <= LIMITS.max_head_bytes {
                raw.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            client.send(&raw);
            (client.response(false), client.closed())
        })
        .await;
        assert_eq!(reply.status, 431);
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(closed);

        // Right at the limit is fine.
        let reply = client(move || {
            let mut client = Client::connect(address);
            let mut raw = b"GET /echo HTTP/1.1\r\nX-Filler: ".to_vec();
            raw.resize(LIMITS.max_head_bytes - 4, b'x');
            raw.extend_from_slice(b"\r\n\r\n");
            client.send(&raw);
            client.response(false)
        })
        .await;
        assert_eq!(reply.status, 200);
    }

    #[tokio::test]
    async fn requests_with_a_body_get_400_and_close() {
        let address = start(TEST_LIMITS).await;
        for raw in [
            "GET /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            let (reply, closed) = client(move || {
                let mut client = Client::connect(address);
                client.send(raw.as_bytes());
                (client.response(false), client.closed())
            })
            .await;
            assert_eq!(reply.status, 400, "{raw:?}");
            assert_eq!(reply.header("Connection"), Some("close"));
            assert!(closed, "{raw:?}");
        }
        let reply = request(address, "GET /echo HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(reply.status, 200);
    }

    #[tokio::test]
    async fn malformed_requests_get_400_and_close() {
        let address = start(TEST_LIMITS).await;
        for raw in [
            "GET /echo\r\n\r\n",
            "GET  /echo HTTP/1.1\r\n\r\n",
            "GET /echo HTTP/1.1 extra\r\n\r\n",
            "GET echo HTTP/1.1\r\n\r\n",
            "GET /echo HTTQ/1.1\r\n\r\n",
            "G(T /echo HTTP/1.1\r\n\r\n",
            "GET /echo%zz HTTP/1.1\r\n\r\n",
            "GET /echo?x=%ff HTTP/1.1\r\n\r\n",
            "GET /echo HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET /echo HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET /echo HTTP/1.1\nHost: x\r\n\r\n",
            "GET /echo HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "GET /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "\u{1}GET /echo HTTP/1.1\r\n\r\n",
        ] {
            let (reply, closed) = client(move || {
                let mut client = Client::connect(address);
                client.send(raw.as_bytes());
                (client.response(false), client.closed())
            })
            .await;
            assert_eq!(reply.status, 400, "{raw:?}");
            assert_eq!(reply.header("Connection"), Some("close"), "{raw:?}");
            assert!(closed, "{raw:?}");
        }
        let reply = request(address, "GET /echo HTTP/2.0\r\n\r\n").await;
        assert_eq!(reply.status, 505);
    }

    #[tokio::test]
    async fn answers_503_without_an_event_loop() {
        // The event loop ended: sending fails.
        let (requests, receiver) = mpsc::channel(1);
        drop(receiver);
        let address = start_with(TEST_LIMITS, requests);
        let reply = request(address, "GET /echo HTTP/1.1\r\n\r\n").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body, format!("{SHUTTING_DOWN}\n"));

        // The event loop dropped the answer's sender.
        let address = start(TEST_LIMITS).await;
        let reply = request(address, "GET /drop HTTP/1.1\r\n\r\n").await;
        assert_eq!(reply.status, 503);
    }

    #[tokio::test]
    async fn refuses_connections_beyond_the_limit() {
        let limits = Limits {
            max_connections: 1,
            ..TEST_LIMITS
        };
        let address = start(limits).await;
        let (refused, closed, served) = client(move || {
            let mut holder = Client::connect(address);
            holder.send(b"GET /echo HTTP/1.1\r\n\r\n");
            assert_eq!(holder.response(false).status, 200);
            let mut refused = Client::connect(address);
            let reply = refused.response(false);
            let closed = refused.closed();
            drop(holder);
            // The slot frees once the server notices the close; retry until then.
            let served = (0..100).any(|_| {
                let mut client = Client::connect(address);
                client.send(b"GET /echo HTTP/1.1\r\n\r\n");
                let status = client.response(false).status;
                std::thread::sleep(Duration::from_millis(20));
                status == 200
            });
            (reply, closed, served)
        })
        .await;
        assert_eq!(refused.status, 503);
        assert_eq!(refused.body, "too many connections\n");
        assert_eq!(refused.header("Connection"), Some("close"));
        assert!(closed);
        assert!(served);
    }

    #[tokio::test]
    async fn times_out_slow_and_idle_clients() {
        let address = start(TEST_LIMITS).await;
        let (reply, closed) = client(move || {
            let mut client = Client::connect(address);
            client.send(b"GET /echo HTTP/1.1\r\nHost: ");
            (client.response(false), client.closed())
        })
        .await;
        assert_eq!(reply.status, 408);
        assert!(closed);

        // An idle connection is closed silently, after serving what it asked for.
        let (reply, closed) = client(move || {
            let mut client = Client::connect(address);
            client.send(b"GET /echo HTTP/1.1\r\n\r\n");
            (client.response(false), client.closed())
        })
        .await;
        assert_eq!(reply.status, 200);
        assert!(closed);
    }

    #[test]
    fn parses_targets() {
        let parsed = |target| parse_target(target);
        assert_eq!(parsed("/"), Some(("/".to_owned(), vec![])));
        assert_eq!(
            parsed("/a+b%2b?q=a+b%2B&&k"),
            Some((
                "/a+b+".to_owned(),
                vec![
                    ("q".to_owned(), "a b+".to_owned()),
                    ("k".to_owned(), String::new())
                ]
            ))
        );
        assert_eq!(parsed("http://host"), Some(("/".to_owned(), vec![])));
        assert_eq!(
            parsed("https://host:1/x?y=1#z"),
            Some(("/x".to_owned(), vec![("y".to_owned(), "1".to_owned())]))
        );
        assert_eq!(parsed("*"), None);
        assert_eq!(parsed("/%"), None);
        assert_eq!(parsed("/%4"), None);
        assert_eq!(parsed("/%C3"), None);
        assert_eq!(percent_decode("%41%62", false).as_deref(), Some("Ab"));
    }

    #[test]
    fn judges_without_panicking_on_any_head() {
        // Every prefix and some byte flips of a valid head: none may panic.
        let head =
            b"GET http://h/a%20b?c=d+e HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        for end in 0..=head.len() {
            let _ = judge(&head[..end]);
        }
        for index in 0..head.len() {
            for byte in [0, b'\r', b'\n', b' ', b':', b'%', 0xff] {
                let mut mutated = head.to_vec();
                mutated[index] = byte;
                let _ = judge(&mutated);
            }
        }
    }

    #[test]
    fn bind_reports_one_line_errors() {
        let error = bind("localhost").unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot listen on \"localhost\": not an IP address and port such as \
             127.0.0.1:9464 or [::]:9464"
        );
        let listener = bind(" 127.0.0.1:0 ").unwrap();
        let address = listener.local_addr().unwrap();
        let error = bind(&address.to_string()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("cannot listen on {address}: address already in use")
        );
    }

    #[test]
    fn bind_sets_reuseaddr_and_nonblocking() {
        let listener = bind("127.0.0.1:0").unwrap();
        let mut reuse: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is the listener's, open for this call, and the value and
        // length pointers point at live locals of the sizes getsockopt is told.
        let result = unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw mut reuse).cast(),
                &mut length,
            )
        };
        assert_eq!(result, 0);
        assert_ne!(reuse, 0);
        // Non-blocking: accept returns at once with no connection waiting.
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
