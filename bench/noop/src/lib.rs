//! The wasm floor for `make bench`: per request, read the `authorization`
//! header and set `x-noop` on the request, then continue. This is the least
//! any proxy-wasm HTTP filter costs in Envoy (VM entry, one header read, one
//! header write), the baseline oauth-pep's cached path is compared with.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let seen = if self.get_http_request_header("authorization").is_some() {
            "1"
        } else {
            "0"
        };
        self.set_http_request_header("x-noop", Some(seen));
        Action::Continue
    }
}
