//! The one door to the host. Every call returns or logs its error instead of
//! panicking; values the client controls are read as bytes, since the SDK's
//! string getters unwrap invalid UTF-8.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{info, warn};
use oauth_pep_core::callout::{Callout, CalloutReply, MAX_REPLY_BYTES};
use oauth_pep_core::metrics::{Catalogue, Counter, Gauge, Histogram, Metric, Metrics};
use oauth_pep_core::response::HttpResponse;
use oauth_pep_core::services::{CasMismatch, Clock, Random, RandomError, SharedStore};
use oauth_pep_core::upstream_oauth::{Routing, RoutingNeeds};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

/// The host's services, as the core's traits ([`oauth_pep_core::services`],
/// [`oauth_pep_core::metrics::Metrics`]).
pub struct Host {
    /// The id of every metric this VM defined.
    metric_ids: HashMap<Metric, u32>,
}

impl Host {
    /// Defines every metric of `catalogue`. Metric ids belong to one VM, so
    /// each VM (one per Envoy worker) defines its own; Envoy gives every VM
    /// that defines a name the same stat, so counts add up across workers.
    pub fn new(catalogue: &Catalogue) -> Host {
        let mut metric_ids = HashMap::new();
        for (metric, name) in catalogue.all() {
            let kind = match metric {
                Metric::Counter(_) => MetricType::Counter,
                Metric::Gauge(_) => MetricType::Gauge,
                Metric::Histogram(_) => MetricType::Histogram,
            };
            match hostcalls::define_metric(kind, &name) {
                Ok(id) => {
                    metric_ids.insert(metric, id);
                }
                Err(status) => warn!("cannot define metric {name}: {status:?}"),
            }
        }
        Host { metric_ids }
    }

    fn update(&self, metric: Metric, update: impl FnOnce(u32) -> Result<(), Status>) {
        // A metric that could not be defined was logged then.
        if let Some(&id) = self.metric_ids.get(&metric) {
            if let Err(status) = update(id) {
                warn!("cannot update metric {metric:?}: {status:?}");
            }
        }
    }
}

/// The host calls that act on a request or make a callout: what the glue's
/// routing (parking, waking, resuming, answering) does to the world, as a
/// trait so that routing can be tested natively against a recording fake.
/// Together with the clock and the metrics, the glue's whole view of the
/// host once configured.
pub trait Door: Clock + Metrics {
    /// Dispatches `callout`; the token its answer will come back with.
    fn dispatch(&self, callout: &Callout) -> Result<u32, String>;
    /// Makes `context_id` the context later host calls act on (another
    /// request, from a root callback). Fails when that request is gone.
    fn set_effective_context(&self, context_id: u32) -> Result<(), ()>;
    fn send_response(&self, response: &HttpResponse);
    fn resume_request(&self);
    fn remove_request_header(&self, name: &str);
    fn set_request_header(&self, name: &str, value: &str);
    /// Makes Envoy pick the route again, for the `:path` just set.
    fn clear_route_cache(&self);
    /// Puts the denial reason in the request's filter state, as
    /// `wasm.oauth_pep.reason`, for Envoy's access log
    /// (`%FILTER_STATE(wasm.oauth_pep.reason:PLAIN)%`). Envoy only: the SDK
    /// panics on any status but Ok, and Envoy answers Ok for a new key set
    /// from a request context, which is the only place this is called from.
    fn set_reason_filter_state(&self, code: &str);
    /// How often the root context's tick comes.
    fn set_tick_period(&self, period: Duration);
}

impl Door for Host {
    fn set_tick_period(&self, period: Duration) {
        if let Err(why) = set_tick_period(period) {
            warn!("cannot set the tick period to {period:?}: {why}");
        }
    }

    fn dispatch(&self, callout: &Callout) -> Result<u32, String> {
        hostcalls::dispatch_http_call(
            &callout.upstream,
            callout.all_headers(),
            callout.body.as_deref(),
            Vec::new(),
            Duration::from_millis(callout.timeout_ms),
        )
        .map_err(|status| {
            format!(
                "{status:?} (is `{}` a configured cluster?)",
                callout.upstream
            )
        })
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), ()> {
        hostcalls::set_effective_context(context_id).map_err(|status| {
            info!("request context {context_id} is gone: {status:?}");
        })
    }

    fn send_response(&self, response: &HttpResponse) {
        let headers: Vec<(&str, &str)> = response
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Err(status) =
            hostcalls::send_http_response(response.status, headers, Some(&response.body))
        {
            warn!("cannot send the local reply: {status:?}");
        }
    }

    fn resume_request(&self) {
        if let Err(status) = hostcalls::resume_http_request() {
            warn!("cannot resume the request: {status:?}");
        }
    }

    fn remove_request_header(&self, name: &str) {
        if let Err(status) = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name) {
            warn!("cannot remove request header {name}: {status:?}");
        }
    }

    fn set_request_header(&self, name: &str, value: &str) {
        if let Err(status) =
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
        {
            warn!("cannot set request header {name}: {status:?}");
        }
    }

    fn clear_route_cache(&self) {
        if let Err(status) = hostcalls::call_foreign_function("clear_route_cache", Some(&[])) {
            warn!("cannot clear the route cache: {status:?}");
        }
    }

    fn set_reason_filter_state(&self, code: &str) {
        if let Err(status) =
            hostcalls::set_property(vec!["oauth_pep.reason"], Some(code.as_bytes()))
        {
            warn!("cannot set the reason filter state: {status:?}");
        }
    }
}

impl Clock for Host {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl Metrics for Host {
    fn increment(&self, counter: Counter, by: u64) {
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        self.update(Metric::Counter(counter), |id| {
            hostcalls::increment_metric(id, by)
        });
    }

    fn set(&self, gauge: Gauge, value: u64) {
        self.update(Metric::Gauge(gauge), |id| {
            hostcalls::record_metric(id, value)
        });
    }

    fn record(&self, histogram: Histogram, value: u64) {
        self.update(Metric::Histogram(histogram), |id| {
            hostcalls::record_metric(id, value)
        });
    }
}

/// Proxy-wasm shared data: one store per VM id, shared by every worker's VM.
pub struct SharedData;

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas.unwrap_or(0))),
            Ok((None, _)) => None,
            Err(status) => {
                warn!("cannot read shared data {key}: {status:?}");
                None
            }
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(CasMismatch),
            // The write did not happen: for the caller, like a lost race.
            Err(status) => {
                warn!("cannot write shared data {key}: {status:?}");
                Err(CasMismatch)
            }
        }
    }
}

/// WASI `random_get` (proxy-wasm has no random hostcall): for in-flight
/// marker ids and the jti of client assertions.
pub struct HostRandom;

impl Random for HostRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        getrandom::getrandom(buf).map_err(|e| RandomError(e.to_string()))
    }
}

/// Envoy's `verify_signature` foreign function: serialized
/// `VerifySignatureArguments` in, `VerifySignatureResult` out. Envoy only:
/// Kong fails the call of a foreign function it does not know.
pub fn verify_signature(arguments: &[u8]) -> Result<Vec<u8>, String> {
    match hostcalls::call_foreign_function("verify_signature", Some(arguments)) {
        Ok(reply) => Ok(reply.unwrap_or_default()),
        Err(status) => Err(format!("{status:?}")),
    }
}

pub fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}

pub fn set_tick_period(period: Duration) -> Result<(), String> {
    hostcalls::set_tick_period(period).map_err(|s| format!("{s:?}"))
}

pub fn request_headers() -> Vec<(String, String)> {
    match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
        // Envoy's names are lowercase already, and most values UTF-8: both
        // are kept as they came, without another copy.
        Ok(headers) => headers
            .into_iter()
            .map(|(mut name, value)| {
                if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    name.make_ascii_lowercase();
                }
                let value = String::from_utf8(value)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                (name, value)
            })
            .collect(),
        Err(status) => {
            warn!("cannot read request headers: {status:?}");
            Vec::new()
        }
    }
}

/// The request body Envoy buffered so far, its first `max` bytes at most
/// (the host clamps to what there is). An error reads as no body, which the
/// core refuses.
pub fn request_body(max: usize) -> Vec<u8> {
    match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, max) {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            warn!("cannot read the request body: {status:?}");
            Vec::new()
        }
    }
}

/// The client's address without its port (Envoy's `source.address`, which
/// is the peer, or the `X-Forwarded-For` address with `use_remote_address:
/// false`); `None` where the host has no such attribute.
pub fn client_address() -> Option<String> {
    let raw = hostcalls::get_property(vec!["source", "address"]).ok()??;
    let raw = std::str::from_utf8(&raw).ok()?;
    Some(without_port(raw).to_string())
}

/// The SHA-256 of the connection's client certificate, hex (Envoy's
/// `connection.sha256_peer_certificate_digest`); `None` on plain HTTP,
/// without a client certificate, or where the host has no such attribute
/// (Kong), and on any host error.
pub fn peer_certificate_digest() -> Option<String> {
    let raw =
        hostcalls::get_property(vec!["connection", "sha256_peer_certificate_digest"]).ok()??;
    let digest = std::str::from_utf8(&raw).ok()?.trim();
    (!digest.is_empty()).then(|| digest.to_string())
}

/// Envoy's routing of one request, as read once: what upstream OAuth rules
/// bound to a virtual host, route or cluster compare.
#[derive(Debug, Clone, Default)]
pub struct RouteFacts {
    pub virtual_host: Option<Rc<str>>,
    pub route: Option<Rc<str>>,
    pub cluster: Option<Rc<str>>,
}

impl RouteFacts {
    pub fn routing(&self) -> Routing<'_> {
        Routing {
            virtual_host: self.virtual_host.as_deref(),
            route: self.route.as_deref(),
            cluster: self.cluster.as_deref(),
        }
    }

    /// The bytes the facts hold.
    pub fn len(&self) -> usize {
        [&self.virtual_host, &self.route, &self.cluster]
            .iter()
            .map(|f| f.as_ref().map_or(0, |s| s.len()))
            .sum()
    }
}

/// Where Envoy routes the request (`xds.virtual_host_name`, `xds.route_name`,
/// `xds.cluster_name`), each read only when `needs` says some upstream OAuth
/// rule compares it. Envoy picks the route before the filter chain runs, so
/// all three are known in `on_http_request_headers` (measured on 1.39.3);
/// an unnamed route reads as empty. Kong has none of them. `None` when no
/// rule compares any.
pub fn routing(needs: RoutingNeeds) -> Option<RouteFacts> {
    if !needs.any() {
        return None;
    }
    let read = |wanted: bool, name: &str| -> Option<Rc<str>> {
        if !wanted {
            return None;
        }
        match hostcalls::get_property(vec!["xds", name]) {
            Ok(Some(value)) => String::from_utf8(value).ok().map(Rc::from),
            Ok(None) => None,
            Err(status) => {
                log::debug!("cannot read xds.{name}: {status:?}");
                None
            }
        }
    };
    Some(RouteFacts {
        virtual_host: read(needs.virtual_host, "virtual_host_name"),
        route: read(needs.route, "route_name"),
        cluster: read(needs.cluster, "cluster_name"),
    })
}

/// `10.0.0.1:443` → `10.0.0.1`, `[::1]:443` → `::1`; an address without a
/// port is kept whole.
fn without_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => address,
    }
}

/// Whether the host is Envoy, which picks the route after this filter and so
/// must be told when `:path` changed. Kong routes before plugins run, and
/// its host traps on a foreign function it does not know, so it must never
/// be asked. `xds.node` (Envoy's node, with its user agent) is an Envoy
/// attribute Kong does not have.
pub fn is_envoy() -> bool {
    matches!(
        hostcalls::get_property(vec!["xds", "node"]),
        Ok(Some(node)) if !node.is_empty()
    )
}

/// A reply without headers is a failed call (Envoy on reset/timeout, Kong on
/// any failure): it becomes `status: None`, never an empty success.
pub fn callout_reply(num_headers: usize, body_size: usize) -> CalloutReply {
    let status = if num_headers == 0 {
        None
    } else {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok())
    };
    if body_size > MAX_REPLY_BYTES {
        return CalloutReply {
            status,
            body: Vec::new(),
            oversized: Some(body_size),
        };
    }
    let body = if body_size == 0 {
        Vec::new()
    } else {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    CalloutReply {
        status,
        body,
        oversized: None,
    }
}

#[cfg(test)]
mod tests {
    use super::without_port;

    #[test]
    fn the_port_is_dropped_from_either_address_family() {
        assert_eq!(without_port("10.0.0.1:443"), "10.0.0.1");
        assert_eq!(without_port("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(without_port("2001:db8::1"), "2001:db8::1");
        assert_eq!(without_port("10.0.0.1"), "10.0.0.1");
    }
}
