//! The API inventory: the routes this workload's app really serves, as the sidecar saw them
//! (OWASP API9:2023, improper inventory management: the endpoint nobody documented, the old
//! version still answering, the route callers reach without a token). Each request the app
//! answered is counted under its method and route, the path with its identifiers replaced by
//! `{id}` (`/orders/{id}/items`): numbers, UUIDs, long hexadecimal or mixed tokens, e-mail
//! addresses and percent-encoded text. What a scanner probes for and the app does not serve (404,
//! 405, 501) is left out, and so is what the sidecar refused before the app saw it.
//!
//! Served at the admin port's `GET /inventory` (the pod only, as `/config_dump`). At most
//! [`MAX_ROUTES`] routes are kept, so a caller cannot grow it without bound; requests for routes
//! past it are counted as dropped.
//!
//! A request already seen costs a lookup in an immutable map (no lock, no allocation), a few
//! atomic adds and, when it names a caller, one uncontended `try_lock`; a new route copies the
//! map once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::{json, Value};

use super::events::{now_millis, rfc3339_millis};

/// How many routes are kept.
pub const MAX_ROUTES: usize = 1000;

/// How many distinct callers a route names; past them it says there were more.
const MAX_CALLERS: usize = 8;

/// The longest route kept whole; a longer one is cut there and ends in `...`.
const MAX_ROUTE_BYTES: usize = 256;

#[derive(Default)]
pub struct Inventory {
    /// By `"<METHOD> <route>"`. Callers choose these keys, so the hasher stays the standard
    /// library's keyed one: with an unkeyed hash, paths made to collide would turn every lookup
    /// into a walk of the whole table.
    routes: ArcSwap<HashMap<Box<str>, Arc<Route>>>,
    /// Requests for routes past [`MAX_ROUTES`].
    dropped: AtomicU64,
    /// Whether the table filling up was logged.
    full_logged: AtomicBool,
    /// New routes are added one at a time (the map is copied for each), with what the tree of
    /// routes holds so far.
    adding: Mutex<Tree>,
}

/// The routes' prefixes (`GET /users`, `GET /users/{name}`), and how many literal children each
/// has: past [`MAX_NAMES`] children, a new one is `{name}`. So an app that answers every path
/// (a single-page app's 200, a framework's 401 for every path without a login) is one route
/// under a scanner's thousand probes (the review), and so is `/users/alice` for each user.
#[derive(Default)]
struct Tree {
    prefixes: std::collections::HashSet<Box<str>>,
    children: HashMap<Box<str>, usize>,
    /// Keys that were read as another route (`GET /users/alice` as `GET /users/{name}`), so a
    /// request for one finds its route without this lock; at most [`MAX_ROUTES`].
    aliases: usize,
}

/// How many literal names a route's segment may take before the next is `{name}`.
const MAX_NAMES: usize = 32;

struct Route {
    method: &'static str,
    route: Box<str>,
    requests: AtomicU64,
    first_seen: u64,
    last_seen: AtomicU64,
    /// Answers by class: 1xx to 5xx.
    by_class: [AtomicU64; 5],
    /// Requests that carried a verified token.
    authenticated: AtomicU64,
    /// Requests from callers that proved no mesh identity (a PERMISSIVE port's plaintext).
    plaintext: AtomicU64,
    callers: Mutex<Callers>,
    /// The last caller found named (its hash), or `u64::MAX` once the list is full: what most
    /// requests of a route check, without the lock (one caller calls it again and again).
    caller_seen: AtomicU64,
}

#[derive(Default)]
struct Callers {
    named: Vec<Box<str>>,
    more: bool,
}

/// One request the app answered.
pub struct Observed<'a> {
    pub method: &'static str,
    /// As the app got it (normalised).
    pub path: &'a str,
    pub status: u16,
    /// The caller's SPIFFE ID; empty for plaintext.
    pub principal: &'a str,
    /// Whether it carried a token that verified.
    pub authenticated: bool,
}

impl Inventory {
    pub fn observe(&self, o: Observed<'_>) {
        if matches!(o.status, 0 | 404 | 405 | 501) {
            return;
        }
        let mut buf = [0u8; MAX_ROUTE_BYTES + 24];
        let key = key(o.method, o.path, &mut buf);
        let routes = self.routes.load();
        let added;
        let route = match routes.get(key) {
            Some(route) => route,
            None => match self.add(o.method, key) {
                Some(route) => {
                    added = route;
                    &added
                }
                None => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        let now = now_millis();
        route.requests.fetch_add(1, Ordering::Relaxed);
        route.last_seen.fetch_max(now, Ordering::Relaxed);
        if let Some(class) = route.by_class.get(usize::from(o.status / 100).wrapping_sub(1)) {
            class.fetch_add(1, Ordering::Relaxed);
        }
        if o.authenticated {
            route.authenticated.fetch_add(1, Ordering::Relaxed);
        }
        if o.principal.is_empty() {
            route.plaintext.fetch_add(1, Ordering::Relaxed);
        } else {
            let seen = route.caller_seen.load(Ordering::Relaxed);
            let hash = caller_hash(o.principal);
            if seen == u64::MAX || seen == hash {
                return;
            }
            // Contended: another request of this route is naming its caller; this one's goes
            // unnamed (its count is exact either way).
            if let Ok(mut callers) = route.callers.try_lock() {
                if !callers.more && !callers.named.iter().any(|c| **c == *o.principal) {
                    match callers.named.len() < MAX_CALLERS {
                        true => callers.named.push(o.principal.into()),
                        false => callers.more = true,
                    }
                }
                route.caller_seen.store(if callers.more { u64::MAX } else { hash }, Ordering::Relaxed);
            }
        }
    }

    /// The route of a key not seen before: an existing one when a segment has had too many
    /// names, else a new one unless the table is full.
    fn add(&self, method: &'static str, key: &str) -> Option<Arc<Route>> {
        let mut tree = self.adding.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let routes = self.routes.load();
        if let Some(route) = routes.get(key) {
            return Some(route.clone());
        }
        let collapsed = tree.collapse(key);
        if let Some(route) = routes.get(collapsed.as_str()) {
            let route = route.clone();
            if tree.aliases < MAX_ROUTES {
                tree.aliases += 1;
                let mut next = HashMap::clone(&routes);
                next.insert(key.into(), route.clone());
                self.routes.store(Arc::new(next));
            }
            return Some(route);
        }
        if routes.len() - tree.aliases >= MAX_ROUTES {
            if !self.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = MAX_ROUTES,
                    "the API inventory is full: requests for routes not yet in it are counted as dropped"
                );
            }
            return None;
        }
        tree.insert(&collapsed);
        let route = Arc::new(Route {
            method,
            route: collapsed[method.len() + 1..].into(),
            requests: AtomicU64::new(0),
            first_seen: now_millis(),
            last_seen: AtomicU64::new(0),
            by_class: Default::default(),
            authenticated: AtomicU64::new(0),
            plaintext: AtomicU64::new(0),
            callers: Mutex::new(Callers::default()),
            caller_seen: AtomicU64::new(0),
        });
        let mut next = HashMap::clone(&routes);
        if collapsed != key && tree.aliases < MAX_ROUTES {
            tree.aliases += 1;
            next.insert(key.into(), route.clone());
        }
        next.insert(collapsed.into(), route.clone());
        self.routes.store(Arc::new(next));
        Some(route)
    }

    /// What `GET /inventory` answers: every route, sorted by route and method.
    pub fn report(&self) -> Value {
        let routes = self.routes.load();
        // Each route once, not under its aliases.
        let mut sorted: Vec<&Arc<Route>> =
            routes.iter().filter(|(key, r)| key[r.method.len() + 1..] == *r.route).map(|(_, r)| r).collect();
        sorted.sort_by(|a, b| (&a.route, a.method).cmp(&(&b.route, b.method)));
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let routes: Vec<Value> = sorted
            .iter()
            .map(|r| {
                let callers = r.callers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let [c1, c2, c3, c4, c5] = &r.by_class;
                json!({
                    "method": r.method,
                    "route": r.route,
                    "requests": load(&r.requests),
                    "status": {"1xx": load(c1), "2xx": load(c2), "3xx": load(c3), "4xx": load(c4), "5xx": load(c5)},
                    "authenticated": load(&r.authenticated),
                    "plaintext": load(&r.plaintext),
                    "callers": callers.named,
                    "more_callers": callers.more,
                    "first_seen": rfc3339_millis(r.first_seen),
                    "last_seen": rfc3339_millis(load(&r.last_seen).max(r.first_seen)),
                })
            })
            .collect();
        json!({"routes": routes, "max_routes": MAX_ROUTES, "dropped_requests": load(&self.dropped)})
    }
}

impl Tree {
    /// `key` with each literal segment past a prefix's [`MAX_NAMES`] children read as `{name}`.
    fn collapse(&self, key: &str) -> String {
        let (method, path) = key.split_once(' ').unwrap_or((key, "/"));
        let mut out = String::with_capacity(key.len());
        out.push_str(method);
        out.push(' ');
        for segment in path.split('/').skip(1) {
            let parent = out.len();
            out.push('/');
            out.push_str(segment);
            let literal = segment != "{id}" && segment != "{name}";
            if literal
                && !self.prefixes.contains(out.as_str())
                && self.children.get(&out[..parent]).is_some_and(|&n| n >= MAX_NAMES)
            {
                out.truncate(parent);
                out.push_str("/{name}");
            }
        }
        if out.len() == method.len() + 1 {
            out.push('/');
        }
        out
    }

    /// Records a new route's prefixes, counting each new one as its parent's child.
    fn insert(&mut self, route: &str) {
        let mut end = route.find(' ').map_or(route.len(), |p| p + 1);
        while let Some(next) =
            route[end + 1..].find('/').map(|p| end + 1 + p).or((end < route.len()).then_some(route.len()))
        {
            let (parent, prefix) = (&route[..end], &route[..next]);
            if self.prefixes.insert(prefix.into()) {
                *self.children.entry(parent.into()).or_default() += 1;
            }
            if next == route.len() {
                break;
            }
            end = next;
        }
    }
}

/// A caller's SPIFFE ID hashed for [`Route::caller_seen`] (never `u64::MAX`, which means full).
/// Principals come from the CA, not from callers, so an unkeyed hash serves.
fn caller_hash(principal: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = super::Fnv1a::default();
    h.write(principal.as_bytes());
    h.finish().min(u64::MAX - 1)
}

/// `"<METHOD> <route>"` in `buf`.
fn key<'b>(method: &str, path: &str, buf: &'b mut [u8; MAX_ROUTE_BYTES + 24]) -> &'b str {
    let mut len = 0;
    let mut put = |bytes: &[u8], len: &mut usize| {
        let n = bytes.len().min(buf.len() - *len);
        buf[*len..*len + n].copy_from_slice(&bytes[..n]);
        *len += n;
    };
    put(method.as_bytes(), &mut len);
    put(b" ", &mut len);
    let start = len;
    for segment in path.split('/').skip(1) {
        put(b"/", &mut len);
        put(if is_identifier(segment) { b"{id}" } else { segment.as_bytes() }, &mut len);
        if len - start > MAX_ROUTE_BYTES {
            len = start + MAX_ROUTE_BYTES;
            put(b"...", &mut len);
            break;
        }
    }
    if len == start {
        put(b"/", &mut len);
    }
    // Cut on a character boundary: the path is text, a cut may fall inside a character.
    let mut end = len;
    while std::str::from_utf8(&buf[..end]).is_err() {
        end -= 1;
    }
    std::str::from_utf8(&buf[..end]).unwrap_or_default()
}

/// Whether a path segment is a value rather than a name: what routers write as `{id}`.
fn is_identifier(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    digits == b.len()
        || uuid
        || (b.len() >= 16 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit))
        || (b.len() >= 20
            && digits > 0
            && letters > 0
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'))
        || b.contains(&b'@')
        || b.contains(&b'%')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> String {
        let mut buf = [0u8; MAX_ROUTE_BYTES + 24];
        key("GET", path, &mut buf)["GET ".len()..].to_string()
    }

    #[test]
    fn identifiers_in_a_path_become_id() {
        for (path, expected) in [
            ("/orders/1234", "/orders/{id}"),
            ("/orders/1234/items/7", "/orders/{id}/items/{id}"),
            ("/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301", "/users/{id}"),
            ("/objects/507f1f77bcf86cd799439011", "/objects/{id}"),
            ("/files/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/files/{id}"),
            ("/users/alice@example.com/keys", "/users/{id}/keys"),
            ("/tags/caf%C3%A9", "/tags/{id}"),
            ("/", "/"),
            ("/api/v1/orders", "/api/v1/orders"),
            ("/api/v2/me", "/api/v2/me"),
            ("/health", "/health"),
            ("/reports/quarterly-summary", "/reports/quarterly-summary"),
            ("/deadbeef", "/deadbeef"),
            ("/orders/", "/orders/"),
        ] {
            assert_eq!(route(path), expected, "{path}");
        }
    }

    #[test]
    fn a_long_route_is_cut_on_a_character() {
        let long = format!("/{}", "é".repeat(300));
        let r = route(&long);
        assert!(r.len() <= MAX_ROUTE_BYTES + 3, "{}", r.len());
        assert!(r.ends_with('é') || r.ends_with("..."), "{r}");
    }

    fn observed<'a>(method: &'static str, path: &'a str, status: u16, principal: &'a str) -> Observed<'a> {
        Observed { method, path, status, principal, authenticated: false }
    }

    #[test]
    fn routes_are_counted_by_method_status_and_caller() {
        let inventory = Inventory::default();
        for id in 0..5 {
            let path = format!("/orders/{id}");
            inventory.observe(observed("GET", &path, 200, "spiffe://cluster.local/ns/shop/sa/frontend"));
        }
        inventory.observe(Observed { authenticated: true, ..observed("GET", "/orders/9", 403, "") });
        inventory.observe(observed("POST", "/orders", 201, "spiffe://cluster.local/ns/shop/sa/checkout"));
        // What the app does not serve is no route.
        inventory.observe(observed("GET", "/wp-login.php", 404, ""));
        inventory.observe(observed("DELETE", "/orders", 405, ""));
        let report = inventory.report();
        let routes = report["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 2, "{report:#}");
        // Sorted by route: `/orders` before `/orders/{id}`.
        assert_eq!((routes[0]["method"].as_str(), routes[0]["route"].as_str()), (Some("POST"), Some("/orders")));
        let get = &routes[1];
        assert_eq!((get["method"].as_str(), get["route"].as_str()), (Some("GET"), Some("/orders/{id}")));
        assert_eq!(get["requests"], 6);
        assert_eq!((get["status"]["2xx"].as_u64(), get["status"]["4xx"].as_u64()), (Some(5), Some(1)));
        assert_eq!((get["authenticated"].as_u64(), get["plaintext"].as_u64()), (Some(1), Some(1)));
        assert_eq!(get["callers"], json!(["spiffe://cluster.local/ns/shop/sa/frontend"]));
        assert_eq!(report["dropped_requests"], 0);
    }

    /// The review: an app that answers every path (a single-page app's 200) let a scanner's
    /// probes fill the inventory; and `/users/alice` was a route for each user.
    #[test]
    fn names_past_a_segments_share_are_one_route() {
        let inventory = Inventory::default();
        for n in 0..500 {
            inventory.observe(observed("GET", &format!("/probe-{n}.php"), 200, ""));
            inventory.observe(observed("GET", &format!("/users/user{n}/settings"), 200, ""));
        }
        inventory.observe(observed("GET", "/probe-0.php", 200, ""));
        let report = inventory.report();
        let routes: Vec<(String, u64)> = report["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["route"].as_str().unwrap().to_string(), r["requests"].as_u64().unwrap()))
            .collect();
        assert_eq!(routes.len(), 2 * MAX_NAMES + 1, "{routes:?}");
        let requests = |route: &str| routes.iter().find(|(r, _)| r == route).map(|(_, n)| *n);
        assert_eq!(requests("/{name}"), Some(500 - (MAX_NAMES as u64 - 1)));
        assert_eq!(requests("/probe-0.php"), Some(2), "a name seen before its segment filled keeps its route");
        assert_eq!(requests("/users/{name}/settings"), Some(500 - MAX_NAMES as u64));
        assert_eq!(report["dropped_requests"], 0);
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_it_drops() {
        let inventory = Inventory::default();
        // 32 names under 32 names: every segment within its names, 1,010 routes.
        let path = |n: usize| format!("/r{}/s{}", n / MAX_NAMES, n % MAX_NAMES);
        for n in 0..MAX_ROUTES + 10 {
            inventory.observe(observed("GET", &path(n), 200, ""));
        }
        inventory.observe(observed("GET", &path(0), 200, ""));
        let report = inventory.report();
        assert_eq!(report["routes"].as_array().unwrap().len(), MAX_ROUTES);
        assert_eq!(report["dropped_requests"], 10);
        // A caller cannot grow a route's list of callers either.
        for n in 0..20 {
            let who = format!("spiffe://cluster.local/ns/x/sa/s{n}");
            inventory.observe(observed("GET", &path(0), 200, &who));
        }
        let routes = inventory.report()["routes"].as_array().unwrap().clone();
        let r0 = routes.iter().find(|r| r["route"] == path(0).as_str()).cloned().unwrap();
        assert_eq!((r0["callers"].as_array().unwrap().len(), &r0["more_callers"]), (MAX_CALLERS, &json!(true)));
    }
}
