//! The OAuth scope policy: which scopes a token needs for a method and path.
//!
//! [`Policy::compile`] accepts Gluu Gateway's `oauth_scope_expression` (a JSON
//! array, or a string holding it) or the readable form
//! (`{"GET,POST /items/{id}": "read and (fido or otp)"}`); both compile to the
//! same rules. [`Policy::decide`] finds the most specific rule for a request
//! (see `path.rs` for the exact order, `crate::request` for how request paths
//! are normalised) and evaluates its scope expression (see `expr.rs`; scopes
//! are in `scope.rs`, the two expression syntaxes in `json_logic.rs` and
//! `readable.rs`). `docs/policy.md` describes the language for operators.
//!
//! Nothing is cached between decisions: a decision depends on the path
//! captures, so it could not be reused for another path matching the same rule.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

mod expr;
mod json_logic;
pub mod jsonrpc;
mod path;
mod readable;
mod scope;
mod source;

use expr::Check;
use jsonrpc::{Call, Selector};
use scope::Captures;
use source::{CheckSource, Format};

pub use path::PathSet;

/// A compiled policy. Immutable and shareable between requests and threads.
#[derive(Debug)]
pub struct Policy {
    trie: path::Trie,
    rules: Vec<PathRule>,
    condition_count: usize,
    /// Each rule's path as written and compiled, for load-time checks.
    patterns: Vec<(String, path::Pattern)>,
    /// Things that load but deserve a line in the log.
    warnings: Vec<String>,
}

/// One path pattern and its per-method conditions.
#[derive(Debug)]
struct PathRule {
    conditions: Vec<Condition>,
    /// The condition for methods no condition lists explicitly (`?` / `*`).
    any: Option<usize>,
}

#[derive(Debug)]
struct Condition {
    name: String,
    /// Upper-case; excludes `?` / `*`.
    methods: Vec<String>,
    /// `None`: any valid token.
    check: Option<Check>,
    /// A JSON-RPC selector: the condition applies to the body's entries it
    /// matches, on top of the path's condition.
    selector: Option<Selector>,
    /// For a selector condition: it lists `?` / `*` (any method).
    any_method: bool,
    /// What the token's authentication must be (RFC 9470).
    step_up: Option<StepUp>,
}

/// A condition's authentication requirement (RFC 9470): the token's `acr`
/// one of `acr_values` (when not empty), its `auth_time` at most `max_age`
/// seconds ago (when set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    pub acr_values: Vec<String>,
    pub max_age: Option<u64>,
}

/// The most a `max_age` may be: ten years.
const MAX_AGE_LIMIT: u64 = 10 * 366 * 24 * 3600;

impl StepUp {
    /// Whether the token's authentication meets it. `auth_time` may be up to
    /// `skew` seconds in the future, and old by `max_age` plus `skew`: the
    /// same leeway as `exp` and `nbf`.
    fn met(&self, who: &Presented) -> bool {
        let acr = self.acr_values.is_empty()
            || who
                .acr
                .is_some_and(|acr| self.acr_values.iter().any(|v| v == acr));
        let age = match self.max_age {
            None => true,
            Some(max) => who.auth_time.is_some_and(|t| {
                t <= who.now.saturating_add(who.skew)
                    && who.now.saturating_sub(t) <= max.saturating_add(who.skew)
            }),
        };
        acr && age
    }
}

/// What a request presents to the policy: the token's granted scopes and
/// authentication facts, and the time.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub scopes: &'a [String],
    /// The token's `acr` claim (or the introspection answer's).
    pub acr: Option<&'a str>,
    /// The token's `auth_time` (seconds since the epoch).
    pub auth_time: Option<u64>,
    pub now: u64,
    /// The clock skew allowed (`clock_skew_seconds`).
    pub skew: u64,
}

impl<'a> Presented<'a> {
    /// Scopes alone (no authentication facts).
    pub fn scopes(scopes: &'a [String]) -> Presented<'a> {
        Presented {
            scopes,
            acr: None,
            auth_time: None,
            now: 0,
            skew: 0,
        }
    }
}

impl PathRule {
    /// Whether any condition applies to `method`: the path's own, or a
    /// selector's.
    fn applies(&self, method: &str) -> bool {
        self.condition_for(method).is_some() || self.selecting(method).next().is_some()
    }

    /// The selector conditions for `method`.
    fn selecting<'r>(&'r self, method: &'r str) -> impl Iterator<Item = &'r Condition> + 'r {
        self.conditions.iter().filter(move |c| {
            c.selector.is_some()
                && (c.any_method || c.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
        })
    }

    /// The condition listing `method`; for `HEAD` without one, the `GET`
    /// condition (servers answer `HEAD` with their `GET` handler, so it must
    /// not fall to a weaker `?` condition or rule); else the `?` condition.
    fn condition_for(&self, method: &str) -> Option<&Condition> {
        let listing = |method: &str| {
            self.conditions.iter().find(|c| {
                c.selector.is_none() && c.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
            })
        };
        listing(method)
            .or_else(|| {
                method
                    .eq_ignore_ascii_case("HEAD")
                    .then(|| listing("GET"))
                    .flatten()
            })
            .or_else(|| self.any.and_then(|i| self.conditions.get(i)))
    }
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    /// No rule matches the path and method.
    NoRule,
    /// `rule` names the matched rule, e.g. `GET /transactions/{^[0-9]+$}`.
    Allow { rule: String },
    /// The token lacks the scopes. `required` are the scopes of the simplest
    /// way to satisfy the rule, for the `scope` attribute of the RFC 6750
    /// challenge; spontaneous scopes have the path captures filled in where
    /// that gives a concrete scope (`transactions:124`), and are given as the
    /// regex otherwise. Empty if the rule can never be satisfied.
    InsufficientScope { rule: String, required: Vec<String> },
    /// The token's authentication does not meet `rule`'s step-up (RFC 9470):
    /// what it asks for, and `required`, the scopes missing too (empty when
    /// the scopes are fine), so that one new authorization fixes both.
    StepUp {
        rule: String,
        step_up: StepUp,
        required: Vec<String>,
    },
    /// The rule for this method and path reads the JSON-RPC body: decide
    /// again with its calls.
    NeedBody,
    /// The body's calls cannot be judged by the selectors.
    BadBody(jsonrpc::BodyProblem),
}

/// Why a policy does not compile. `rule` names the rule: its path as written,
/// prefixed by its methods when the problem is in one condition (`GET,POST
/// /items/?`), or `policy[n]` / the readable key when there is no usable path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// No rules at all.
    Empty,
    /// The JSON does not have the expected shape (wrong type, missing or
    /// unknown field, unparsable policy string, bad readable key).
    Malformed {
        rule: String,
        problem: String,
    },
    EmptyPath {
        rule: String,
    },
    PathNotAbsolute {
        rule: String,
    },
    /// More than one `??`.
    MultipleMultiSegment {
        rule: String,
    },
    BadPathSegment {
        rule: String,
        segment: String,
        problem: String,
    },
    BadPathRegex {
        rule: String,
        regex: String,
        error: String,
    },
    /// The same path pattern twice (after normalisation; `{id}` and `?` are
    /// the same pattern). `first` is how it was written the first time.
    DuplicatePath {
        rule: String,
        first: String,
    },
    NoConditions {
        rule: String,
    },
    EmptyMethods {
        rule: String,
    },
    BadMethod {
        rule: String,
        method: String,
    },
    /// A method (or any-method `?`/`*`) with two conditions on one path.
    DuplicateMethod {
        rule: String,
        method: String,
    },
    /// An empty scope, a scope with whitespace, or a spontaneous scope that is
    /// not a valid regex.
    BadScope {
        rule: String,
        scope: String,
        problem: String,
    },
    UnknownOperator {
        rule: String,
        operator: String,
    },
    /// A JsonLogic operator that does not apply to the scope booleans
    /// (arithmetic, comparisons, strings, `map`, …).
    UnsupportedOperator {
        rule: String,
        operator: String,
    },
    VarOutOfRange {
        rule: String,
        index: usize,
        data_len: usize,
    },
    /// A `PCn` group in a spontaneous scope with n = 0 or above the number of
    /// captures the path pattern makes. (In Gluu's format a `PCn` at or past
    /// its `??` loads, never satisfied, with a warning.)
    CaptureOutOfRange {
        rule: String,
        scope: String,
        group: String,
        captures: usize,
    },
    /// Bad arguments to a JsonLogic operator, or a malformed readable
    /// expression.
    BadExpression {
        rule: String,
        expression: String,
        problem: String,
    },
    /// A bad `acr_values` or `max_age` (RFC 9470 step-up).
    BadStepUp {
        rule: String,
        problem: String,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Empty => f.write_str("policy has no rules"),
            PolicyError::Malformed { rule, problem } => write!(f, "policy rule `{rule}`: {problem}"),
            PolicyError::EmptyPath { rule } => write!(f, "policy rule `{rule}`: empty path"),
            PolicyError::PathNotAbsolute { rule } => {
                write!(f, "policy rule `{rule}`: path does not start with `/`")
            }
            PolicyError::MultipleMultiSegment { rule } => {
                write!(f, "policy rule `{rule}`: more than one `??` in the path")
            }
            PolicyError::BadPathSegment {
                rule,
                segment,
                problem,
            } => write!(f, "policy rule `{rule}`: path segment `{segment}`: {problem}"),
            PolicyError::BadPathRegex { rule, regex, error } => {
                write!(f, "policy rule `{rule}`: bad path regex `{{{regex}}}`: {error}")
            }
            PolicyError::DuplicatePath { rule, first } => write!(
                f,
                "policy rule `{rule}`: duplicate path (same pattern as `{first}`)"
            ),
            PolicyError::NoConditions { rule } => {
                write!(f, "policy rule `{rule}`: `conditions` is empty")
            }
            PolicyError::EmptyMethods { rule } => {
                write!(f, "policy rule `{rule}`: empty list of HTTP methods")
            }
            PolicyError::BadMethod { rule, method } => {
                write!(f, "policy rule `{rule}`: invalid HTTP method `{method}`")
            }
            PolicyError::DuplicateMethod { rule, method } => write!(
                f,
                "policy rule `{rule}`: method `{method}` has more than one condition for this path"
            ),
            PolicyError::BadScope {
                rule,
                scope,
                problem,
            } => write!(f, "policy rule `{rule}`: scope `{scope}`: {problem}"),
            PolicyError::UnknownOperator { rule, operator } => write!(
                f,
                "policy rule `{rule}`: unknown operator `{operator}` (supported: {})",
                json_logic::SUPPORTED
            ),
            PolicyError::UnsupportedOperator { rule, operator } => write!(
                f,
                "policy rule `{rule}`: JsonLogic operator `{operator}` is not supported: it does not apply to the scope booleans of `data` (supported: {})",
                json_logic::SUPPORTED
            ),
            PolicyError::VarOutOfRange {
                rule,
                index,
                data_len: 0,
            } => write!(
                f,
                "policy rule `{rule}`: `var` {index} is out of range: the condition has no `data` (list the scopes in `data`; Gluu Gateway failed on such a rule with a 500)"
            ),
            PolicyError::VarOutOfRange {
                rule,
                index,
                data_len,
            } => write!(
                f,
                "policy rule `{rule}`: `var` {index} is out of range (`data` has {data_len} entries)"
            ),
            PolicyError::CaptureOutOfRange {
                rule,
                scope,
                group,
                captures,
            } => write!(
                f,
                "policy rule `{rule}`: scope `{scope}` uses group `{group}` but the path has {captures} capture(s)"
            ),
            PolicyError::BadExpression {
                rule,
                expression,
                problem,
            } => write!(f, "policy rule `{rule}`: expression `{expression}`: {problem}"),
            PolicyError::BadStepUp { rule, problem } => {
                write!(f, "policy rule `{rule}`: {problem}")
            }
        }
    }
}

impl std::error::Error for PolicyError {}

fn is_method_token(m: &str) -> bool {
    !m.is_empty()
        && m.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn is_any_method(m: &str) -> bool {
    m == "*" || m == "?"
}

/// Rules for one pattern, gathered before compiling: the readable form may
/// give the same pattern in several keys.
struct Group {
    format: Format,
    pattern: path::Pattern,
    name: String,
    path: String,
    conditions: Vec<source::ConditionSource>,
}

impl Policy {
    /// Compiles the `policy` field of the filter's JSON config.
    pub fn compile(value: &Value) -> Result<Policy, PolicyError> {
        let (format, sources) = source::read(value)?;
        if sources.is_empty() {
            return Err(PolicyError::Empty);
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut by_pattern: HashMap<String, usize> = HashMap::new();
        for src in sources {
            let pattern = path::parse_pattern(&src.path, &src.name)?;
            let canonical = pattern.canonical();
            match by_pattern.get(&canonical) {
                Some(&i) => {
                    let first = groups.get_mut(i);
                    if format == Format::Gluu {
                        return Err(PolicyError::DuplicatePath {
                            rule: src.name,
                            first: first.map(|g| g.path.clone()).unwrap_or_default(),
                        });
                    }
                    if let Some(group) = first {
                        group.conditions.extend(src.conditions);
                    }
                }
                None => {
                    by_pattern.insert(canonical, groups.len());
                    groups.push(Group {
                        format,
                        pattern,
                        name: src.name,
                        path: src.path,
                        conditions: src.conditions,
                    });
                }
            }
        }
        let mut policy = Policy {
            trie: path::Trie::default(),
            rules: Vec::with_capacity(groups.len()),
            condition_count: 0,
            patterns: Vec::with_capacity(groups.len()),
            warnings: Vec::new(),
        };
        for group in groups {
            let rule = compile_rule(&group, &mut policy.warnings)?;
            policy.condition_count += rule.conditions.len();
            policy
                .patterns
                .push((group.path.clone(), group.pattern.clone()));
            if let Err(existing) = policy.trie.insert(group.pattern, policy.rules.len()) {
                // Unreachable: patterns were grouped by canonical form above.
                return Err(PolicyError::DuplicatePath {
                    rule: group.name,
                    first: format!("rule #{existing}"),
                });
            }
            policy.rules.push(rule);
        }
        Ok(policy)
    }

    /// Decides a request on scopes alone (no step-up facts, no body): for
    /// UMA resources, whose policies may use neither. `path` must already be
    /// normalised by [`crate::request::normalize_path`].
    pub fn decide(&self, method: &str, path: &str, scopes: &[String]) -> PolicyDecision {
        self.decide_request(method, path, &Presented::scopes(scopes), None)
    }

    /// Decides a request: the path's condition for `method`, and, when the
    /// path has JSON-RPC selectors for `method`, every selector condition an
    /// entry of the body matches (`calls`: [`PolicyDecision::NeedBody`]
    /// until it is read). Scopes and step-up of every condition that applies
    /// must be met; a step-up not met is answered first (with the missing
    /// scopes), since one new authorization can fix both.
    pub fn decide_request(
        &self,
        method: &str,
        path: &str,
        who: &Presented,
        calls: Option<&[Call]>,
    ) -> PolicyDecision {
        let found = self
            .trie
            .find(path, |i| self.rules.get(i).filter(|r| r.applies(method)));
        let Some((rule, captures)) = found else {
            return PolicyDecision::NoRule;
        };
        let mut applicable: Vec<&Condition> = rule.condition_for(method).into_iter().collect();
        let selecting: Vec<&Condition> = rule.selecting(method).collect();
        if !selecting.is_empty() {
            let Some(calls) = calls else {
                // Selectors only add: a token the path's condition refuses
                // is answered without the body being read.
                return match judge(&applicable, &captures, who) {
                    PolicyDecision::Allow { .. } | PolicyDecision::NoRule => {
                        PolicyDecision::NeedBody
                    }
                    refused => refused,
                };
            };
            for call in calls {
                for condition in &selecting {
                    let Some(selector) = &condition.selector else {
                        continue;
                    };
                    if jsonrpc::missing_name(selector, call) {
                        return PolicyDecision::BadBody(jsonrpc::BodyProblem::NoName {
                            method: selector.method.clone(),
                            member: jsonrpc::name_member(&selector.method),
                            id: call.id.clone(),
                        });
                    }
                    if selector.matches(call)
                        && !applicable.iter().any(|c| std::ptr::eq(*c, *condition))
                    {
                        applicable.push(condition);
                    }
                }
            }
        }
        judge(&applicable, &captures, who)
    }

    /// Whether some condition uses step-up or a JSON-RPC selector (which
    /// UMA resources cannot: an RPT is judged on its permissions).
    pub fn uses_request_facts(&self) -> bool {
        self.rules
            .iter()
            .flat_map(|r| &r.conditions)
            .any(|c| c.selector.is_some() || c.step_up.is_some())
    }

    /// `(path pattern, rule path)` pairs where some request path matches both:
    /// for those paths the path set (public paths) wins and the rule is
    /// never consulted, which is worth a warning at load.
    pub fn shadowed_by(&self, paths: &PathSet) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for (written, pattern) in paths.patterns() {
            for (rule, rule_pattern) in &self.patterns {
                if pattern.may_overlap(rule_pattern) {
                    pairs.push((written.clone(), rule.clone()));
                }
            }
        }
        pairs
    }

    /// The plain scopes (no `^regex` scope) that the rules whose paths may
    /// overlap `paths` name, each once, in rule order: what a protected
    /// resource over those paths advertises as `scopes_supported` (RFC 9728).
    pub fn scopes_on(&self, paths: &PathSet) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for ((_, rule_pattern), rule) in self.patterns.iter().zip(&self.rules) {
            if !paths
                .patterns()
                .iter()
                .any(|(_, p)| p.may_overlap(rule_pattern))
            {
                continue;
            }
            for condition in &rule.conditions {
                for scope in condition.check.iter().flat_map(|c| c.plain_scopes()) {
                    if !out.iter().any(|s| s == scope) {
                        out.push(scope.to_string());
                    }
                }
            }
        }
        out
    }

    /// Things that loaded but are probably not what was meant, one line each
    /// (a Gluu condition without `data`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The number of conditions (a path with conditions for `GET` and for
    /// `POST,PUT` counts two).
    pub fn rule_count(&self) -> usize {
        self.condition_count
    }
}

/// Every condition in `applicable` must be met: scopes, then step-up. The
/// rule named on success is the most specific (the last: a selector's).
fn judge(
    applicable: &[&Condition],
    captures: &[path::Capture<'_>],
    who: &Presented,
) -> PolicyDecision {
    let Some(named) = applicable.last() else {
        return PolicyDecision::NoRule;
    };
    let mut missing: Vec<String> = Vec::new();
    let mut short: Option<&Condition> = None;
    for condition in applicable {
        if let Some(check) = &condition.check {
            if !check.allows(who.scopes, captures) {
                for scope in check.required(captures) {
                    if !missing.contains(&scope) {
                        missing.push(scope);
                    }
                }
                short.get_or_insert(condition);
            }
        }
    }
    let stepping = applicable.iter().find_map(|c| {
        c.step_up
            .as_ref()
            .filter(|s| !s.met(who))
            .map(|s| (c.name.clone(), s.clone()))
    });
    match (short, stepping) {
        (_, Some((rule, step_up))) => PolicyDecision::StepUp {
            rule,
            step_up,
            required: missing,
        },
        (Some(condition), None) => PolicyDecision::InsufficientScope {
            rule: condition.name.clone(),
            required: missing,
        },
        (None, None) => PolicyDecision::Allow {
            rule: named.name.clone(),
        },
    }
}

fn compile_rule(group: &Group, warnings: &mut Vec<String>) -> Result<PathRule, PolicyError> {
    // Gluu's format keeps Gluu's numbering: nothing from `??` on.
    let captures = match group.format {
        Format::Gluu => Captures {
            available: group.pattern.gluu_captures,
            cut_at_multi: group.pattern.multi,
        },
        Format::Readable => Captures::up_to(group.pattern.captures),
    };
    let mut rule = PathRule {
        conditions: Vec::with_capacity(group.conditions.len()),
        any: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for cond in &group.conditions {
        if cond.methods.is_empty() {
            return Err(PolicyError::EmptyMethods {
                rule: group.name.clone(),
            });
        }
        let methods: Vec<String> = cond
            .methods
            .iter()
            .map(|m| m.trim().to_ascii_uppercase())
            .collect();
        let selector = match &cond.selector {
            None => None,
            Some((method, name)) => Some(Selector::new(
                method,
                name.as_deref(),
                &format!("{} {}", methods.join(","), cond.path),
            )?),
        };
        let name = match &selector {
            None => format!("{} {}", methods.join(","), cond.path),
            Some(selector) => format!("{} {} {selector}", methods.join(","), cond.path),
        };
        let step_up = step_up(cond, &name)?;
        let mut explicit = Vec::new();
        let mut any_method = false;
        for m in &methods {
            if !is_any_method(m) && !is_method_token(m) {
                return Err(PolicyError::BadMethod {
                    rule: name,
                    method: m.clone(),
                });
            }
            let key = if is_any_method(m) { "*" } else { m.as_str() };
            // A selector condition is one more per method and selector.
            let key = match &selector {
                None => key.to_string(),
                Some(selector) => format!("{key} {selector}"),
            };
            if seen.contains(&key) {
                return Err(PolicyError::DuplicateMethod {
                    rule: name,
                    method: m.clone(),
                });
            }
            seen.push(key);
            if is_any_method(m) && selector.is_some() {
                any_method = true;
            } else if is_any_method(m) {
                rule.any = Some(rule.conditions.len());
            } else {
                explicit.push(m.clone());
            }
        }
        let check = match &cond.check {
            CheckSource::Anything => None,
            CheckSource::Logic {
                rule: logic,
                data,
                no_data,
            } => {
                let check = Check::from_json_logic(logic, data, captures, &name)?;
                for (scope, group) in check.unbound() {
                    warnings.push(format!(
                        "policy rule `{name}`: scope `{scope}` uses group `{group}`, but the path has {} capture(s) before its `??` (in Gluu's format `??` and the segments after it capture nothing), so the scope is never satisfied, as in Gluu Gateway; to bind what `??` consumed, write the rule in the readable form",
                        captures.available
                    ));
                }
                // It loaded, so the rule reads no scope: it is a constant.
                if *no_data {
                    let outcome = match check.constant() {
                        Some(true) => "allows every valid token",
                        _ => "denies every request",
                    };
                    warnings.push(format!(
                        "policy rule `{name}`: `scope_expression` has no `data`, so its rule `{logic}` tests no scope and {outcome} (Gluu Gateway answered 500 for it)"
                    ));
                }
                Some(check)
            }
            CheckSource::Readable(text) => Some(Check::from_readable(text, captures, &name)?),
        };
        rule.conditions.push(Condition {
            name,
            methods: explicit,
            check,
            selector,
            any_method,
            step_up,
        });
    }
    Ok(rule)
}

/// A condition's `acr_values` and `max_age`, checked: values that go in a
/// quoted challenge parameter, space-separated, so no spaces, quotes or
/// backslashes; an age within ten years.
fn step_up(cond: &source::ConditionSource, name: &str) -> Result<Option<StepUp>, PolicyError> {
    let bad = |problem: String| PolicyError::BadStepUp {
        rule: name.to_string(),
        problem,
    };
    let acr_values = match &cond.acr_values {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| match v.as_str() {
                Some(acr)
                    if !acr.is_empty()
                        && acr.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\') =>
                {
                    Ok(acr.to_string())
                }
                _ => Err(bad(format!(
                    "`acr_values` entry {v} must be a non-empty string of printable ASCII without spaces, quotes or backslashes"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(bad(format!(
                "`acr_values` must be a non-empty array of strings, not {other}"
            )))
        }
    };
    let max_age = match &cond.max_age {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(age) if age <= MAX_AGE_LIMIT => Some(age),
            _ => {
                return Err(bad(format!(
                    "`max_age` must be a whole number of seconds from 0 to {MAX_AGE_LIMIT}, not {v}"
                )))
            }
        },
    };
    if acr_values.is_empty() && max_age.is_none() {
        return Ok(None);
    }
    Ok(Some(StepUp {
        acr_values,
        max_age,
    }))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::request::normalize_path;
    use serde_json::json;

    fn scopes(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn allow(rule: &str) -> PolicyDecision {
        PolicyDecision::Allow {
            rule: rule.to_string(),
        }
    }

    fn insufficient(rule: &str, required: &[&str]) -> PolicyDecision {
        PolicyDecision::InsufficientScope {
            rule: rule.to_string(),
            required: scopes(required),
        }
    }

    /// (method, raw request path, granted scopes, decision)
    type Case<'a> = (&'a str, &'a str, &'a [&'a str], PolicyDecision);

    fn check(policy: &Policy, cases: &[Case<'_>]) {
        for (method, raw, granted, want) in cases {
            let path = normalize_path(raw).unwrap();
            let got = policy.decide(method, &path, &scopes(granted));
            assert_eq!(&got, want, "{method} {raw} with {granted:?}");
        }
    }

    #[test]
    fn seed_example() {
        let gluu = json!([{
            "path": "/transactions/{^[0-9]+$}",
            "conditions": [{
                "httpMethods": ["GET"],
                "scope_expression": {
                    "rule": {"var": 0},
                    "data": ["^transactions:(?<PC1>[0-9]+)$"]
                }
            }]
        }]);
        let readable = json!({"GET /transactions/{^[0-9]+$}": "^transactions:(?<PC1>[0-9]+)$"});
        let rule = "GET /transactions/{^[0-9]+$}";
        let cases = [
            (
                "GET",
                "/transactions/123",
                &["transactions:123"][..],
                allow(rule),
            ),
            (
                "GET",
                "/transactions/45",
                &["transactions:45"][..],
                allow(rule),
            ),
            (
                "GET",
                "/transactions/124",
                &["transactions:123"][..],
                insufficient(rule, &["transactions:124"]),
            ),
            (
                "GET",
                "/transactions/12",
                &["transactions:123"][..],
                insufficient(rule, &["transactions:12"]),
            ),
            (
                "GET",
                "/transactions/abc",
                &["transactions:abc"][..],
                PolicyDecision::NoRule,
            ),
            (
                "GET",
                "/transactions/123x",
                &["transactions:123"][..],
                PolicyDecision::NoRule,
            ),
            (
                "POST",
                "/transactions/123",
                &["transactions:123"][..],
                PolicyDecision::NoRule,
            ),
            (
                "get",
                "/transactions/123",
                &["transactions:123"][..],
                allow(rule),
            ),
        ];
        check(&Policy::compile(&gluu).unwrap(), &cases);
        check(&Policy::compile(&readable).unwrap(), &cases);
    }

    fn gluu_policy() -> Value {
        json!([
            {"path": "/posts/??", "conditions": [{
                "httpMethods": ["GET", "POST"],
                "scope_expression": {
                    "rule": {"and": [{"var": 0}, {"or": [{"var": 1}, {"var": 2}]}]},
                    "data": ["admin", "^posts:.+$", "email"]
                }
            }]},
            {"path": "/posts", "conditions": [{
                "httpMethods": ["GET"],
                "scope_expression": {"rule": {"var": 0}, "data": ["read"]}
            }]},
            {"path": "/??", "conditions": [{"httpMethods": ["?"]}]},
            {"path": "/a/b/c", "conditions": [{"httpMethods": ["GET"], "scope_expression": null}]},
            {"path": "/a/?/c", "conditions": [{"httpMethods": ["GET"],
                "scope_expression": {"rule": {"var": 0}, "data": ["never"]}}]},
            {"path": "/a/?/d", "conditions": [{"httpMethods": ["GET"],
                "scope_expression": {"rule": {"var": 0}, "data": ["^d:(?<PC1>.+)$"]}}]},
            {"path": "/num/{[0-9]+}", "conditions": [{"httpMethods": ["GET"],
                "scope_expression": {"rule": true, "data": []}}]},
            {"path": "/x/b", "conditions": [{"httpMethods": ["GET"],
                "scope_expression": {"rule": {"var": 0}, "data": ["xb"]}}]},
            {"path": "/x/?", "conditions": [{"httpMethods": ["POST"],
                "scope_expression": {"rule": {"var": 0}, "data": ["xq"]}}]}
        ])
    }

    #[test]
    fn gluu_examples_with_fixed_matching() {
        let policy = Policy::compile(&gluu_policy()).unwrap();
        assert_eq!(policy.rule_count(), 9);
        let posts = "GET,POST /posts/??";
        let cases = [
            // `/posts/??` also covers `/posts` for POST, since `/posts` has only GET.
            ("GET", "/posts", &["read"][..], allow("GET /posts")),
            ("POST", "/posts", &["admin", "email"][..], allow(posts)),
            ("GET", "/posts/1", &["admin", "posts:1"][..], allow(posts)),
            ("GET", "/posts/1/2", &["admin", "email"][..], allow(posts)),
            (
                "GET",
                "/posts/1",
                &["admin"][..],
                insufficient(posts, &["admin", "^posts:.+$"]),
            ),
            (
                "GET",
                "/posts/1",
                &["posts:1"][..],
                insufficient(posts, &["admin", "^posts:.+$"]),
            ),
            ("DELETE", "/posts/1", &[][..], allow("? /??")),
            ("GET", "/", &[][..], allow("? /??")),
            ("GET", "/anything/else", &[][..], allow("? /??")),
            // Literal beats `?` at the same position.
            ("GET", "/a/b/c", &[][..], allow("GET /a/b/c")),
            ("GET", "/a/z/c", &["never"][..], allow("GET /a/?/c")),
            // The literal `b` branch dead-ends; backtracking finds `/a/?/d`.
            ("GET", "/a/b/d", &["d:b"][..], allow("GET /a/?/d")),
            (
                "GET",
                "/a/b/d",
                &["d:c"][..],
                insufficient("GET /a/?/d", &["d:b"]),
            ),
            // Anchored regex: `{[0-9]+}` does not match `abc123x`.
            ("GET", "/num/123", &[][..], allow("GET /num/{[0-9]+}")),
            ("GET", "/num/abc123x", &[][..], allow("? /??")),
            // Method filtering is part of the match.
            ("GET", "/x/b", &["xb"][..], allow("GET /x/b")),
            ("POST", "/x/b", &["xq"][..], allow("POST /x/?")),
            ("PUT", "/x/b", &[][..], allow("? /??")),
            // Normalisation happens before matching.
            ("GET", "/a/q/../b/./c/", &[][..], allow("GET /a/b/c")),
            ("GET", "/a/%62/c?x=1", &[][..], allow("GET /a/b/c")),
            ("GET", "//a//b//c", &[][..], allow("GET /a/b/c")),
        ];
        check(&policy, &cases);
    }

    #[test]
    fn double_wildcard_captures_by_format() {
        let posts = |path: &str, pc: &str| {
            json!([{"path": path, "conditions": [{
                "httpMethods": ["GET", "POST"],
                "scope_expression": {
                    "rule": {"and": [{"var": 0}, {"or": [{"var": 1}, {"var": 2}]}]},
                    "data": ["admin", format!("^posts:(?<{pc}>.+)$"), "email"]
                }
            }]}])
        };
        // Gluu's format keeps Gluu's numbering: `??` captures nothing, so
        // the PC1 of Gluu's own documented example never passed in Gluu. It
        // loads as Gluu ran it (the scope is never satisfied), with a warning
        // naming the rule; the hint leaves that scope out.
        let policy = Policy::compile(&posts("/posts/??", "PC1")).unwrap();
        let rule = "GET,POST /posts/??";
        assert_eq!(
            policy.warnings(),
            [format!("policy rule `{rule}`: scope `^posts:(?<PC1>.+)$` uses group `PC1`, but the path has 0 capture(s) before its `??` (in Gluu's format `??` and the segments after it capture nothing), so the scope is never satisfied, as in Gluu Gateway; to bind what `??` consumed, write the rule in the readable form")]
        );
        check(
            &policy,
            &[
                ("GET", "/posts/1", &["admin", "email"][..], allow(rule)),
                (
                    "GET",
                    "/posts/1",
                    &["admin", "posts:1"][..],
                    insufficient(rule, &["admin", "email"]),
                ),
                (
                    "POST",
                    "/posts/1/comments",
                    &["admin", "posts:1/comments", "posts:1", "posts:"][..],
                    insufficient(rule, &["admin", "email"]),
                ),
            ],
        );
        // Nor does anything after it (Gluu's docs list one capture for
        // `/users/??/?`; its code gave none).
        let policy = Policy::compile(&posts("/users/??/?", "PC1")).unwrap();
        assert_eq!(policy.warnings().len(), 1);
        check(
            &policy,
            &[(
                "GET",
                "/users/a/7",
                &["admin", "posts:7", "posts:a"][..],
                insufficient("GET,POST /users/??/?", &["admin", "email"]),
            )],
        );
        // Without a `??` a missing capture is a mistake, refused; so is PC0.
        for (path, pc) in [("/posts/?", "PC2"), ("/posts/??", "PC0")] {
            let err = Policy::compile(&posts(path, pc)).unwrap_err();
            assert!(
                matches!(err, PolicyError::CaptureOutOfRange { .. }),
                "{path} {pc}: {err}"
            );
        }
        // The readable form numbers `??` (what it consumed) and what follows.
        let readable = json!({"GET,POST /posts/??": "admin and (^posts:(?<PC1>.+)$ or email)"});
        let rule = "GET,POST /posts/??";
        check(
            &Policy::compile(&readable).unwrap(),
            &[
                ("GET", "/posts/1", &["admin", "posts:1"][..], allow(rule)),
                ("POST", "/posts/1", &["admin", "email"][..], allow(rule)),
                (
                    "GET",
                    "/posts/2",
                    &["admin", "posts:1"][..],
                    insufficient(rule, &["admin", "posts:2"]),
                ),
                (
                    "GET",
                    "/posts/1/2",
                    &["admin", "posts:1/2"][..],
                    allow(rule),
                ),
            ],
        );
        let readable = json!({"GET /users/??/?": "^u:(?<PC2>.+)$"});
        check(
            &Policy::compile(&readable).unwrap(),
            &[
                (
                    "GET",
                    "/users/a/b/7",
                    &["u:7"][..],
                    allow("GET /users/??/?"),
                ),
                (
                    "GET",
                    "/users/7",
                    &["u:8"][..],
                    insufficient("GET /users/??/?", &["u:7"]),
                ),
            ],
        );
        // Before the `??` both formats agree: PC1 is the `?`.
        let rule = "GET,POST /posts/?/??";
        let cases = [
            (
                "GET",
                "/posts/7/comments",
                &["admin", "posts:7"][..],
                allow(rule),
            ),
            (
                "GET",
                "/posts/7/comments",
                &["admin", "posts:8"][..],
                insufficient(rule, &["admin", "posts:7"]),
            ),
            ("POST", "/posts/7", &["admin", "email"][..], allow(rule)),
        ];
        check(
            &Policy::compile(&posts("/posts/?/??", "PC1")).unwrap(),
            &cases,
        );
        let readable = json!({rule: "admin and (^posts:(?<PC1>.+)$ or email)"});
        check(&Policy::compile(&readable).unwrap(), &cases);
    }

    /// Gluu's documented spontaneous-scope examples (docs-gg-prod
    /// `plugin/common-features.md`, "Scopes to URI mapping"), exactly as
    /// written there.
    #[test]
    fn gluu_documented_regex_group_captures() {
        let todos = json!([{
            "path": "/todos/?/command/{^(\\d\\d\\d)-([a-d]{4})$}",
            "conditions": [{
                "httpMethods": ["GET", "POST"],
                "scope_expression": {
                    "rule": {"and": [{"var": 0}]},
                    "data": [
                        "^todos:(?<PC1>.+)$",
                        "^command:(?<PC2>\\d\\d\\d)$",
                        "^subcommand:(?<PC3>[a-d]{4})$",
                        "^profile:.+$",
                        "email"
                    ]
                }
            }]
        }, {
            "path": "/command/{^(\\d\\d\\d)-([a-d]{4})$}",
            "conditions": [{
                "httpMethods": ["GET", "POST"],
                "scope_expression": {
                    "rule": {"and": [{"var": 0}, {"var": 1}]},
                    "data": ["^command:(?<PC1>\\d\\d\\d)$", "^subcommand:(?<PC2>[a-d]{4})$"]
                }
            }]
        }]);
        let policy = Policy::compile(&todos).unwrap();
        let rule = "GET,POST /todos/?/command/{^(\\d\\d\\d)-([a-d]{4})$}";
        let other = "GET,POST /command/{^(\\d\\d\\d)-([a-d]{4})$}";
        check(
            &policy,
            &[
                // The docs' rule only tests `var` 0, i.e. PC1 = `hh`.
                (
                    "GET",
                    "/todos/hh/command/123-abcd",
                    &["todos:hh"][..],
                    allow(rule),
                ),
                (
                    "GET",
                    "/todos/hh/command/123-abcd",
                    &["todos:zz"][..],
                    insufficient(rule, &["todos:hh"]),
                ),
                // Anchored: Gluu's unanchored match would take `1234-abcde`.
                (
                    "GET",
                    "/todos/hh/command/1234-abcde",
                    &["todos:hh"][..],
                    PolicyDecision::NoRule,
                ),
                // The same scopes, numbered from this path's own captures.
                (
                    "POST",
                    "/command/123-abcd",
                    &["command:123", "subcommand:abcd"][..],
                    allow(other),
                ),
                (
                    "POST",
                    "/command/123-abcd",
                    &["command:123", "subcommand:abcc"][..],
                    insufficient(other, &["command:123", "subcommand:abcd"]),
                ),
            ],
        );
        // All three captures bound: PC3 is `abcd`.
        let all = json!({"GET /todos/?/command/{^(\\d\\d\\d)-([a-d]{4})$}":
            "^todos:(?<PC1>.+)$ and ^command:(?<PC2>\\d\\d\\d)$ and ^subcommand:(?<PC3>[a-d]{4})$"});
        let rule = "GET /todos/?/command/{^(\\d\\d\\d)-([a-d]{4})$}";
        let granted = ["todos:hh", "command:123", "subcommand:abcd"];
        check(
            &Policy::compile(&all).unwrap(),
            &[
                (
                    "GET",
                    "/todos/hh/command/123-abcd",
                    &granted[..],
                    allow(rule),
                ),
                (
                    "GET",
                    "/todos/hh/command/123-abcc",
                    &granted[..],
                    insufficient(rule, &["todos:hh", "command:123", "subcommand:abcc"]),
                ),
            ],
        );
        // `/images/?/{(.+)\.(jpg|png)}`: PC1 the folder, PC2 the name, PC3 the type.
        let images = json!([{"path": "/images/?/{(.+)\\.(jpg|png)}", "conditions": [{
            "httpMethods": ["GET"],
            "scope_expression": {
                "rule": {"or": [{"var": 0}, {"and": [{"var": 1}, {"var": 2}]}]},
                "data": ["^img:(?<PC1>[a-z]+)$", "^imgname:(?<PC2>.+)$", "^imgtype:(?<PC3>.+)$"]
            }
        }]}]);
        let rule = "GET /images/?/{(.+)\\.(jpg|png)}";
        check(
            &Policy::compile(&images).unwrap(),
            &[
                ("GET", "/images/me/cat.png", &["img:me"][..], allow(rule)),
                (
                    "GET",
                    "/images/me/cat.png",
                    &["imgname:cat", "imgtype:png"][..],
                    allow(rule),
                ),
                (
                    "GET",
                    "/images/me/cat.png",
                    &["imgname:cat", "imgtype:jpg"][..],
                    insufficient(rule, &["img:me"]),
                ),
                (
                    "GET",
                    "/images/me/cat.gif",
                    &["img:me"][..],
                    PolicyDecision::NoRule,
                ),
            ],
        );
        // A fourth capture does not exist, and the error says how many do.
        let mut bad = images.clone();
        bad[0]["conditions"][0]["scope_expression"]["data"][2] = json!("^imgtype:(?<PC4>.+)$");
        let err = Policy::compile(&bad).unwrap_err().to_string();
        assert_eq!(
            err,
            "policy rule `GET /images/?/{(.+)\\.(jpg|png)}`: scope `^imgtype:(?<PC4>.+)$` uses group `PC4` but the path has 3 capture(s)"
        );
    }

    #[test]
    fn optional_regex_group_is_absent() {
        // `(x)?` that did not match: PC1 exists (numbering is stable) but is
        // absent, so no scope satisfies it and the hint is the regex itself.
        let policy =
            Policy::compile(&json!({"GET /f/{a(x)?}/?": "^f:(?<PC1>.*)$ or ^g:(?<PC2>.+)$"}))
                .unwrap();
        let rule = "GET /f/{a(x)?}/?";
        check(
            &policy,
            &[
                ("GET", "/f/ax/1", &["f:x"][..], allow(rule)),
                (
                    "GET",
                    "/f/a/1",
                    &["f:"][..],
                    insufficient(rule, &["^f:(?<PC1>.*)$"]),
                ),
                ("GET", "/f/a/1", &["g:1"][..], allow(rule)),
            ],
        );
    }

    #[test]
    fn condition_without_data() {
        // Gluu raised a Lua error (Kong: 500). Here a rule that reads no scope
        // loads, with a warning; one that does is refused, saying why.
        let policy = Policy::compile(&json!([
            {"path": "/open", "conditions": [{"httpMethods": ["GET"], "scope_expression": {"rule": true}}]},
            {"path": "/shut", "conditions": [{"httpMethods": ["GET"],
                "scope_expression": {"rule": {"!": true}, "data": null}}]},
            {"path": "/empty", "conditions": [{"httpMethods": ["GET"],
                "scope_expression": {"rule": false, "data": []}}]}
        ]))
        .unwrap();
        check(
            &policy,
            &[
                ("GET", "/open", &[][..], allow("GET /open")),
                ("GET", "/shut", &["x"][..], insufficient("GET /shut", &[])),
                ("GET", "/empty", &[][..], insufficient("GET /empty", &[])),
            ],
        );
        assert_eq!(
            policy.warnings(),
            [
                "policy rule `GET /open`: `scope_expression` has no `data`, so its rule `true` tests no scope and allows every valid token (Gluu Gateway answered 500 for it)",
                "policy rule `GET /shut`: `scope_expression` has no `data`, so its rule `{\"!\":true}` tests no scope and denies every request (Gluu Gateway answered 500 for it)",
            ]
        );
        let err = Policy::compile(
            &json!([{"path": "/x", "conditions": [{"httpMethods": ["GET"],
            "scope_expression": {"rule": {"var": 0}}}]}]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy rule `GET /x`: `var` 0 is out of range: the condition has no `data` (list the scopes in `data`; Gluu Gateway failed on such a rule with a 500)"
        );
    }

    #[test]
    fn method_specific_beats_any() {
        let readable = json!({
            "GET /docs/{id}": "READ",
            "POST /docs/?": "READ and (FIDO or OTP)",
            "* /docs/?": "ADMIN"
        });
        let gluu = json!([{"path": "/docs/{id}", "conditions": [
            {"httpMethods": ["GET"], "scope_expression": {"rule": {"var": 0}, "data": ["READ"]}},
            {"httpMethods": ["POST"], "scope_expression": {
                "rule": {"and": [{"var": 0}, {"or": [{"var": 1}, {"var": 2}]}]},
                "data": ["READ", "FIDO", "OTP"]}},
            {"httpMethods": ["*"], "scope_expression": {"rule": {"var": 0}, "data": ["ADMIN"]}}
        ]}]);
        let cases = [
            ("GET", "/docs/1", &["READ"][..], allow("GET /docs/{id}")),
            (
                "POST",
                "/docs/1",
                &["READ"][..],
                insufficient("POST /docs/{id}", &["READ", "FIDO"]),
            ),
            (
                "POST",
                "/docs/1",
                &["READ", "OTP"][..],
                allow("POST /docs/{id}"),
            ),
            (
                "POST",
                "/docs/1",
                &["FIDO", "OTP"][..],
                insufficient("POST /docs/{id}", &["READ", "FIDO"]),
            ),
            (
                "DELETE",
                "/docs/1",
                &["READ"][..],
                insufficient("* /docs/{id}", &["ADMIN"]),
            ),
            ("DELETE", "/docs/1", &["ADMIN"][..], allow("* /docs/{id}")),
            ("GET", "/docs", &["READ"][..], PolicyDecision::NoRule),
        ];
        // The readable form names each condition by its own key's path.
        let rename = |rule: &str| {
            rule.replace("POST /docs/{id}", "POST /docs/?")
                .replace("* /docs/{id}", "* /docs/?")
        };
        let readable_cases: Vec<Case<'_>> = cases
            .iter()
            .map(|(m, p, s, d)| {
                let d = match d {
                    PolicyDecision::Allow { rule } => PolicyDecision::Allow { rule: rename(rule) },
                    PolicyDecision::InsufficientScope { rule, required } => {
                        PolicyDecision::InsufficientScope {
                            rule: rename(rule),
                            required: required.clone(),
                        }
                    }
                    PolicyDecision::NoRule => PolicyDecision::NoRule,
                    other => other.clone(),
                };
                (*m, *p, *s, d)
            })
            .collect();
        check(&Policy::compile(&gluu).unwrap(), &cases);
        check(&Policy::compile(&readable).unwrap(), &readable_cases);
        assert_eq!(Policy::compile(&readable).unwrap().rule_count(), 3);
    }

    #[test]
    fn head_is_judged_by_the_get_condition_unless_it_has_its_own() {
        let policy = Policy::compile(&json!({
            "GET /admin/??": "admin",
            "* /docs/?": "read",
            "GET /docs/?": "docs",
            "GET /ping": "admin",
            "HEAD /ping": "read",
            "? /??": "read"
        }))
        .unwrap();
        check(
            &policy,
            &[
                // Not the weaker catch-all: the GET rule of the more specific path.
                (
                    "HEAD",
                    "/admin/x",
                    &["read"][..],
                    insufficient("GET /admin/??", &["admin"]),
                ),
                ("HEAD", "/admin/x", &["admin"][..], allow("GET /admin/??")),
                ("head", "/admin/x", &["admin"][..], allow("GET /admin/??")),
                // GET beats the path's own `*` condition, as for GET itself.
                (
                    "HEAD",
                    "/docs/1",
                    &["read"][..],
                    insufficient("GET /docs/?", &["docs"]),
                ),
                ("OPTIONS", "/docs/1", &["read"][..], allow("* /docs/?")),
                // An explicit HEAD condition wins.
                ("HEAD", "/ping", &["read"][..], allow("HEAD /ping")),
                (
                    "GET",
                    "/ping",
                    &["read"][..],
                    insufficient("GET /ping", &["admin"]),
                ),
                // OPTIONS is a method like any other.
                ("OPTIONS", "/admin/x", &["read"][..], allow("? /??")),
            ],
        );
    }

    #[test]
    fn both_formats_decide_identically() {
        let gluu = json!([
            {"path": "/transactions/{^[0-9]+$}", "conditions": [
                {"httpMethods": ["GET", "DELETE"], "scope_expression": {
                    "rule": {"and": [{"var": 0}, {"or": [{"var": 1}, {"var": 2}]}]},
                    "data": ["read", "fido", "otp"]}},
                {"httpMethods": ["POST"], "scope_expression": {
                    "rule": {"var": 0}, "data": ["^transactions:(?<PC1>[0-9]+)$"]}}
            ]},
            {"path": "/public/??", "conditions": [{"httpMethods": ["?"],
                "scope_expression": {"rule": true, "data": []}}]},
            {"path": "/users/?/keys/{[a-f0-9]{8}}", "conditions": [{"httpMethods": ["PUT"],
                "scope_expression": {"rule": {"and": [{"!": {"var": 0}}, {"var": 1}]},
                    "data": ["banned", "^keys:(?<PC1>[a-z]+):(?<PC2>[a-f0-9]+)$"]}}]}
        ]);
        let readable = json!({
            "GET,DELETE /transactions/{^[0-9]+$}": "read and (fido or otp)",
            "POST /transactions/{^[0-9]+$}": "^transactions:(?<PC1>[0-9]+)$",
            "? /public/??": "true",
            "PUT /users/?/keys/{[a-f0-9]{8}}": "not banned and ^keys:(?<PC1>[a-z]+):(?<PC2>[a-f0-9]+)$"
        });
        let a = Policy::compile(&gluu).unwrap();
        let b = Policy::compile(&readable).unwrap();
        assert_eq!(a.rule_count(), b.rule_count());
        let requests: &[(&str, &str)] = &[
            ("GET", "/transactions/1"),
            ("DELETE", "/transactions/1"),
            ("POST", "/transactions/1"),
            ("POST", "/transactions/2"),
            ("PUT", "/transactions/1"),
            ("GET", "/transactions/x"),
            ("GET", "/public"),
            ("PATCH", "/public/a/b"),
            ("PUT", "/users/bob/keys/deadbeef"),
            ("PUT", "/users/bob/keys/deadbeefa"),
            ("PUT", "/users/eve/keys/deadbeef"),
            ("GET", "/"),
        ];
        let grants: &[&[&str]] = &[
            &[],
            &["read"],
            &["read", "otp"],
            &["fido"],
            &["transactions:1"],
            &["keys:bob:deadbeef"],
            &["keys:bob:deadbeef", "banned"],
        ];
        for (method, path) in requests {
            for granted in grants {
                let granted = scopes(granted);
                assert_eq!(
                    a.decide(method, path, &granted),
                    b.decide(method, path, &granted),
                    "{method} {path} {granted:?}"
                );
            }
        }
        assert_eq!(
            b.decide("PUT", "/users/bob/keys/deadbeef", &scopes(&[])),
            insufficient("PUT /users/?/keys/{[a-f0-9]{8}}", &["keys:bob:deadbeef"])
        );
    }

    #[test]
    fn json_string_form() {
        let text = gluu_policy().to_string();
        let from_string = Policy::compile(&Value::String(text)).unwrap();
        let from_array = Policy::compile(&gluu_policy()).unwrap();
        assert_eq!(from_string.rule_count(), from_array.rule_count());
        for (method, path) in [("GET", "/posts/1"), ("POST", "/x/b"), ("GET", "/a/b/d")] {
            let granted = scopes(&["admin", "email", "xq", "d:b"]);
            assert_eq!(
                from_string.decide(method, path, &granted),
                from_array.decide(method, path, &granted)
            );
        }
    }

    #[test]
    fn readable_form_details() {
        let policy = Policy::compile(&json!({
            "get, post /a": "x",
            "/b/{name}": "y",
            "?,PUT /c": "z",
            "DELETE /c/": "false"
        }))
        .unwrap();
        assert_eq!(policy.rule_count(), 4);
        check(
            &policy,
            &[
                ("POST", "/a", &["x"][..], allow("GET,POST /a")),
                ("PATCH", "/b/q", &["y"][..], allow("* /b/{name}")),
                ("PUT", "/c", &["z"][..], allow("?,PUT /c")),
                ("DELETE", "/c", &["z"][..], insufficient("DELETE /c/", &[])),
            ],
        );
    }

    #[test]
    fn no_scope_expression_means_any_token() {
        let policy = Policy::compile(&json!([
            {"path": "/a", "conditions": [{"httpMethods": ["GET"]}]},
            {"path": "/b", "conditions": [{"httpMethods": ["GET"], "scope_expression": null}]}
        ]))
        .unwrap();
        check(
            &policy,
            &[
                ("GET", "/a", &[][..], allow("GET /a")),
                ("GET", "/b", &[][..], allow("GET /b")),
                ("POST", "/b", &[][..], PolicyDecision::NoRule),
            ],
        );
    }

    #[test]
    fn validation_errors() {
        let cond = |methods: Value| json!({"httpMethods": methods});
        let one = |path: &str| json!([{"path": path, "conditions": [cond(json!(["GET"]))]}]);
        // (policy, expected variant, fragment of the message: the rule's name)
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!([]), "Empty", "no rules"),
            (json!({}), "Empty", "no rules"),
            (json!("[]"), "Empty", "no rules"),
            (json!(null), "Empty", "no rules"),
            (json!("not json"), "Malformed", "must be the JSON text of"),
            (json!("[not json"), "Malformed", "invalid JSON"),
            (json!("{}"), "Malformed", "oauth_scope_expression array"),
            (json!(3), "Malformed", "expected an array"),
            (json!([3]), "Malformed", "policy[0]"),
            (json!([{"conditions": []}]), "Malformed", "missing `path`"),
            (json!([{"path": "/a"}]), "Malformed", "/a"),
            (
                json!([{"path": "/a", "conditions": [cond(json!(["GET"]))], "extra": 1}]),
                "Malformed",
                "unknown field `extra`",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["GET"], "scope_expresion": {}}]}]),
                "Malformed",
                "scope_expresion",
            ),
            (
                json!([{"path": "/a", "conditions": [{"scope_expression": null}]}]),
                "Malformed",
                "missing `httpMethods`",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": "GET"}]}]),
                "Malformed",
                "array of strings",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["GET"], "scope_expression": {"data": []}}]}]),
                "Malformed",
                "missing `rule`",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["GET"], "scope_expression": {"rule": true, "data": [1]}}]}]),
                "Malformed",
                "`data`",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["GET"], "scope_expression": "read"}]}]),
                "Malformed",
                "`scope_expression`",
            ),
            (json!({"GET": "x"}), "Malformed", "`GET`"),
            (json!({"GET x/y": "x"}), "Malformed", "GET x/y"),
            (json!({"GET /a": true}), "Malformed", "GET /a"),
            (one(""), "EmptyPath", "policy[0]"),
            (json!({"GET /": "x", "GET  ": "y"}), "Malformed", "GET  "),
            (one("a/b"), "PathNotAbsolute", "`a/b`"),
            (one("/a/??/b/??"), "MultipleMultiSegment", "/a/??/b/??"),
            (one("/a/{[0-9}"), "BadPathRegex", "/a/{[0-9}"),
            (one("/a/b{1}"), "BadPathSegment", "/a/b{1}"),
            (
                json!([{"path": "/a/", "conditions": [cond(json!(["GET"]))]},
                    {"path": "/a", "conditions": [cond(json!(["POST"]))]}]),
                "DuplicatePath",
                "`/a`: duplicate path (same pattern as `/a/`)",
            ),
            (
                json!([{"path": "/a/{id}", "conditions": [cond(json!(["GET"]))]},
                    {"path": "/a/?", "conditions": [cond(json!(["POST"]))]}]),
                "DuplicatePath",
                "/a/?",
            ),
            (
                json!([{"path": "/a", "conditions": []}]),
                "NoConditions",
                "/a",
            ),
            (
                json!([{"path": "/a", "conditions": [cond(json!([]))]}]),
                "EmptyMethods",
                "/a",
            ),
            (json!({" /a": "x", ", /b": "y"}), "BadMethod", "/b"),
            (
                json!([{"path": "/a", "conditions": [cond(json!(["GE T"]))]}]),
                "BadMethod",
                "GE T",
            ),
            (
                json!([{"path": "/a", "conditions": [cond(json!(["GET", "get"]))]}]),
                "DuplicateMethod",
                "GET,GET /a",
            ),
            (
                json!([{"path": "/a", "conditions": [cond(json!(["GET"])), cond(json!(["POST", "GET"]))]}]),
                "DuplicateMethod",
                "POST,GET /a",
            ),
            (
                json!([{"path": "/a", "conditions": [cond(json!(["?"])), cond(json!(["?"]))]}]),
                "DuplicateMethod",
                "? /a",
            ),
            (
                json!([{"path": "/a", "conditions": [cond(json!(["*", "?"]))]}]),
                "DuplicateMethod",
                "*,? /a",
            ),
            (
                json!({"GET /a": "x", "GET /a/": "y"}),
                "DuplicateMethod",
                "GET /a",
            ),
            (
                json!({"* /a/{id}": "x", "? /a/?": "y"}),
                "DuplicateMethod",
                "/a/",
            ),
            (json!({"GET /a": "^x("}), "BadScope", "GET /a"),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["GET"], "scope_expression": {"rule": {"var": 0}, "data": ["^("]}}]}]),
                "BadScope",
                "GET /a",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["GET"], "scope_expression": {"rule": {"xor": [true]}, "data": []}}]}]),
                "UnknownOperator",
                "policy rule `GET /a`: unknown operator `xor`",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["GET"], "scope_expression": {"rule": {"var": 1}, "data": ["x"]}}]}]),
                "VarOutOfRange",
                "`var` 1 is out of range",
            ),
            (
                json!([{"path": "/a/?", "conditions": [{"httpMethods": ["GET"], "scope_expression": {"rule": {"var": 0}, "data": ["^x:(?<PC2>.+)$"]}}]}]),
                "CaptureOutOfRange",
                "GET /a/?",
            ),
            (
                json!({"GET /a/{x}/??": "^x:(?<PC3>.+)$"}),
                "CaptureOutOfRange",
                "GET /a/{x}/??",
            ),
            (
                json!({"GET /a": "x and (y"}),
                "BadExpression",
                "unbalanced `(`",
            ),
            (
                json!({"GET /a": "x and"}),
                "BadExpression",
                "dangling operator `and`",
            ),
            (json!({"GET /a": ""}), "BadExpression", "empty expression"),
        ];
        for (value, variant, fragment) in cases {
            let err = Policy::compile(&value).unwrap_err();
            let message = err.to_string();
            assert!(
                format!("{err:?}").starts_with(variant) && message.contains(fragment),
                "{value}: {err:?} / {message}"
            );
        }
    }

    #[test]
    fn hints_fill_captures() {
        let policy = Policy::compile(&json!({
            "GET /acct/{[0-9]+}/tx/{id}": "(admin and audit) or ^acct:(?<PC1>[0-9]+):tx:(?<PC2>.+)$",
            "PUT /acct/{[0-9]+}": "write and ^acct:(?<PC1>[0-9]+)$ and not frozen",
            "DELETE /acct/?": "^acct:(?<PC1>[0-9]+)$"
        }))
        .unwrap();
        check(
            &policy,
            &[
                (
                    "GET",
                    "/acct/12/tx/ab",
                    &[][..],
                    insufficient("GET /acct/{[0-9]+}/tx/{id}", &["acct:12:tx:ab"]),
                ),
                (
                    "GET",
                    "/acct/12/tx/ab",
                    &["acct:12:tx:ab"][..],
                    allow("GET /acct/{[0-9]+}/tx/{id}"),
                ),
                (
                    "GET",
                    "/acct/12/tx/ab",
                    &["admin", "audit"][..],
                    allow("GET /acct/{[0-9]+}/tx/{id}"),
                ),
                (
                    "PUT",
                    "/acct/7",
                    &["write", "acct:7", "frozen"][..],
                    insufficient("PUT /acct/{[0-9]+}", &["write", "acct:7"]),
                ),
                // The capture cannot satisfy `[0-9]+`: the hint is the regex.
                (
                    "DELETE",
                    "/acct/x",
                    &[][..],
                    insufficient("DELETE /acct/?", &["^acct:(?<PC1>[0-9]+)$"]),
                ),
            ],
        );
    }

    #[test]
    fn path_set() {
        let set =
            PathSet::compile(&scopes(&["/health", "/public/??", "/img/{[a-z]+\\.png}"])).unwrap();
        for (path, want) in [
            ("/health", true),
            ("/health/x", false),
            ("/public", true),
            ("/public/a/b", true),
            ("/img/a.png", true),
            ("/img/a.png.exe", false),
            ("/other", false),
        ] {
            assert_eq!(set.matches(path), want, "{path}");
        }
        assert!(matches!(
            PathSet::compile(&scopes(&["/a/??/b/??"])),
            Err(PolicyError::MultipleMultiSegment { .. })
        ));
    }

    #[test]
    fn large_policy() {
        let mut map = serde_json::Map::new();
        for i in 0..1000 {
            map.insert(
                format!("GET /svc{}/items/{{[0-9]+}}/??", i),
                json!(format!("s{i}")),
            );
        }
        let policy = Policy::compile(&Value::Object(map)).unwrap();
        assert_eq!(policy.rule_count(), 1000);
        assert_eq!(
            policy.decide("GET", "/svc999/items/5/x", &scopes(&["s999"])),
            allow("GET /svc999/items/{[0-9]+}/??")
        );
    }

    fn presented<'a>(
        scopes: &'a [String],
        acr: Option<&'a str>,
        auth_time: Option<u64>,
    ) -> Presented<'a> {
        Presented {
            scopes,
            acr,
            auth_time,
            now: 10_000,
            skew: 60,
        }
    }

    fn calls(body: &str) -> Vec<Call> {
        jsonrpc::read_calls(body.as_bytes(), 1 << 16).unwrap().0
    }

    fn step_up(acr: &[&str], max_age: Option<u64>) -> StepUp {
        StepUp {
            acr_values: scopes(acr),
            max_age,
        }
    }

    #[test]
    fn step_up_in_both_forms() {
        let readable = json!({
            "GET /account": {"scope": "read", "acr_values": ["urn:mfa", "urn:hw"], "max_age": 300},
            "GET /recent": {"max_age": 0},
            "GET /plain": "read"
        });
        let gluu = json!([
            {"path": "/account", "conditions": [{"httpMethods": ["GET"],
                "scope_expression": {"rule": {"var": 0}, "data": ["read"]},
                "acr_values": ["urn:mfa", "urn:hw"], "max_age": 300}]},
            {"path": "/recent", "conditions": [{"httpMethods": ["GET"], "max_age": 0}]},
            {"path": "/plain", "conditions": [{"httpMethods": ["GET"],
                "scope_expression": {"rule": {"var": 0}, "data": ["read"]}}]}
        ]);
        let read = scopes(&["read"]);
        let none = scopes(&[]);
        let account = |required: &[&str]| PolicyDecision::StepUp {
            rule: "GET /account".into(),
            step_up: step_up(&["urn:mfa", "urn:hw"], Some(300)),
            required: scopes(required),
        };
        let cases: Vec<(&str, Presented, PolicyDecision)> = vec![
            (
                "/account",
                presented(&read, Some("urn:mfa"), Some(9_800)),
                allow("GET /account"),
            ),
            (
                "/account",
                presented(&read, Some("urn:hw"), Some(9_700)),
                allow("GET /account"),
            ),
            // acr missing, wrong; auth_time missing, too old (300 + 60 skew), in the future.
            (
                "/account",
                presented(&read, None, Some(9_800)),
                account(&[]),
            ),
            (
                "/account",
                presented(&read, Some("urn:pwd"), Some(9_800)),
                account(&[]),
            ),
            (
                "/account",
                presented(&read, Some("urn:mfa"), None),
                account(&[]),
            ),
            (
                "/account",
                presented(&read, Some("urn:mfa"), Some(9_640)),
                allow("GET /account"),
            ),
            (
                "/account",
                presented(&read, Some("urn:mfa"), Some(9_639)),
                account(&[]),
            ),
            (
                "/account",
                presented(&read, Some("urn:mfa"), Some(10_061)),
                account(&[]),
            ),
            // Both missing: the step-up 401, naming the scopes too.
            ("/account", presented(&none, None, None), account(&["read"])),
            // Scopes alone missing: 403.
            (
                "/account",
                presented(&none, Some("urn:mfa"), Some(9_900)),
                insufficient("GET /account", &["read"]),
            ),
            (
                "/recent",
                presented(&none, None, Some(9_950)),
                allow("GET /recent"),
            ),
            (
                "/recent",
                presented(&none, None, Some(9_900)),
                PolicyDecision::StepUp {
                    rule: "GET /recent".into(),
                    step_up: step_up(&[], Some(0)),
                    required: vec![],
                },
            ),
            ("/plain", presented(&read, None, None), allow("GET /plain")),
        ];
        for policy in [
            Policy::compile(&readable).unwrap(),
            Policy::compile(&gluu).unwrap(),
        ] {
            assert!(policy.uses_request_facts());
            for (path, who, want) in &cases {
                assert_eq!(
                    &policy.decide_request("GET", path, who, None),
                    want,
                    "{path} {who:?}"
                );
            }
        }
        assert!(!Policy::compile(&json!({"GET /a": "x"}))
            .unwrap()
            .uses_request_facts());
    }

    #[test]
    fn json_rpc_selectors_in_both_forms() {
        let readable = json!({
            "POST,GET /mcp": "mcp",
            "POST /mcp tools/call admin_*": "admin",
            "POST /mcp tools/call deploy": {"scope": "deploy", "acr_values": ["urn:mfa"]},
            "POST /mcp resources/read file:///secret/*": "secret",
            "POST /mcp prompts/get": "prompts"
        });
        let cond = |sel: Value, scope: &str| {
            json!({"httpMethods": ["POST"], "jsonrpc": sel,
                   "scope_expression": {"rule": {"var": 0}, "data": [scope]}})
        };
        let gluu = json!([{"path": "/mcp", "conditions": [
            {"httpMethods": ["POST", "GET"], "scope_expression": {"rule": {"var": 0}, "data": ["mcp"]}},
            cond(json!({"method": "tools/call", "name": "admin_*"}), "admin"),
            {"httpMethods": ["POST"], "jsonrpc": {"method": "tools/call", "name": "deploy"},
             "scope_expression": {"rule": {"var": 0}, "data": ["deploy"]}, "acr_values": ["urn:mfa"]},
            cond(json!({"method": "resources/read", "name": "file:///secret/*"}), "secret"),
            cond(json!({"method": "prompts/get"}), "prompts")
        ]}]);
        let tool = |name: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#
            )
        };
        let mcp = scopes(&["mcp"]);
        let wide = scopes(&["mcp", "admin", "secret", "prompts", "deploy"]);
        let admin_only = scopes(&["admin"]);
        let rule = |r: &str| r.to_string();
        let cases: Vec<(&[String], String, PolicyDecision)> = vec![
            (&mcp, tool("search"), allow("POST,GET /mcp")),
            (&mcp, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.into(), allow("POST,GET /mcp")),
            (&mcp, r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.into(), allow("POST,GET /mcp")),
            (&mcp, tool("admin_users"), insufficient("POST /mcp tools/call admin_*", &["admin"])),
            (&wide, tool("admin_users"), allow("POST /mcp tools/call admin_*")),
            // Selectors add to the path's rule, never relax it.
            (&admin_only, tool("admin_users"), insufficient("POST,GET /mcp", &["mcp"])),
            // With `acr` urn:mfa (below: without).
            (&mcp, tool("deploy"), insufficient("POST /mcp tools/call deploy", &["deploy"])),
            (
                &mcp,
                r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///secret/k"}}"#.into(),
                insufficient("POST /mcp resources/read file:///secret/*", &["secret"]),
            ),
            (
                &mcp,
                r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///public/k","name":"file:///secret/x"}}"#.into(),
                allow("POST,GET /mcp"),
            ),
            (&mcp, r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"p"}}"#.into(), insufficient("POST /mcp prompts/get", &["prompts"])),
            // A batch: every entry judged; the scopes of every failing one named.
            (
                &mcp,
                format!("[{},{}]", tool("search"), tool("admin_x")),
                insufficient("POST /mcp tools/call admin_*", &["admin"]),
            ),
            (&wide, format!("[{},{}]", tool("search"), tool("admin_x")), allow("POST /mcp tools/call admin_*")),
            // No name where a selector reads one: refused, with the entry's id.
            (
                &wide,
                r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{}}"#.into(),
                PolicyDecision::BadBody(jsonrpc::BodyProblem::NoName {
                    method: "tools/call".into(),
                    member: "name",
                    id: Some("9".into()),
                }),
            ),
            (
                &wide,
                r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":7}}"#.into(),
                PolicyDecision::BadBody(jsonrpc::BodyProblem::NoName {
                    method: "tools/call".into(),
                    member: "name",
                    id: Some("9".into()),
                }),
            ),
        ];
        for policy in [
            Policy::compile(&readable).unwrap(),
            Policy::compile(&gluu).unwrap(),
        ] {
            let who = presented(&mcp, None, None);
            assert_eq!(
                policy.decide_request("POST", "/mcp", &who, None),
                PolicyDecision::NeedBody
            );
            // A token the path's rule refuses: answered without the body.
            let admin = scopes(&["admin"]);
            assert_eq!(
                policy.decide_request("POST", "/mcp", &presented(&admin, None, None), None),
                insufficient("POST,GET /mcp", &["mcp"])
            );
            // GET has no selector: no body read.
            assert_eq!(
                policy.decide_request("GET", "/mcp", &who, None),
                allow("POST,GET /mcp")
            );
            for (granted, body, want) in &cases {
                let who = presented(granted, Some("urn:mfa"), None);
                let got = policy.decide_request("POST", "/mcp", &who, Some(&calls(body)));
                assert_eq!(&got, want, "{body} with {granted:?}");
            }
            let who = presented(&mcp, None, None);
            assert_eq!(
                policy.decide_request("POST", "/mcp", &who, Some(&calls(&tool("deploy")))),
                PolicyDecision::StepUp {
                    rule: rule("POST /mcp tools/call deploy"),
                    step_up: step_up(&["urn:mfa"], None),
                    required: scopes(&["deploy"]),
                }
            );
        }
    }

    #[test]
    fn bad_step_up_and_selectors_name_the_rule() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"GET /a": {"acr_values": []}}),
                "policy rule `GET /a`: `acr_values` must be a non-empty array",
            ),
            (
                json!({"GET /a": {"acr_values": "urn:mfa"}}),
                "policy rule `GET /a`: `acr_values` must be",
            ),
            (
                json!({"GET /a": {"acr_values": ["a b"]}}),
                "policy rule `GET /a`: `acr_values` entry \"a b\"",
            ),
            (
                json!({"GET /a": {"acr_values": ["a\"b"]}}),
                "`acr_values` entry",
            ),
            (
                json!({"GET /a": {"max_age": -1}}),
                "policy rule `GET /a`: `max_age` must be a whole number",
            ),
            (
                json!({"GET /a": {"max_age": 1.5}}),
                "`max_age` must be a whole number",
            ),
            (
                json!({"GET /a": {"max_age": 999_999_999_999u64}}),
                "`max_age` must be a whole number",
            ),
            (
                json!({"GET /a": {"scope": 3}}),
                "`scope` must be an expression string",
            ),
            (json!({"GET /a": {"scopes": "x"}}), "unknown field `scopes`"),
            (
                json!({"POST /mcp tools/call a b": "x"}),
                "JSONRPC_METHOD [NAME_GLOB]",
            ),
            (
                json!({"POST /mcp tools/call": "x", "POST /mcp/ tools/call": "y"}),
                "method `POST` has more than one condition",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["GET"], "acr_values": [1]}]}]),
                "policy rule `GET /a`: `acr_values` entry 1",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["POST"], "jsonrpc": {"name": "x"}}]}]),
                "policy rule `/a`: `jsonrpc.method` must be a string",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["POST"], "jsonrpc": {"method": "a", "tool": "x"}}]}]),
                "unknown field `tool`",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["POST"], "jsonrpc": {"method": "a b"}}]}]),
                "JSON-RPC method `a b`",
            ),
            (
                json!([{"path": "/a", "conditions": [{"httpMethods": ["POST"], "jsonrpc": "tools/call"}]}]),
                "`jsonrpc` must be an object",
            ),
        ];
        for (value, fragment) in cases {
            let message = Policy::compile(&value).unwrap_err().to_string();
            assert!(message.contains(fragment), "{value}: {message}");
        }
        // The same method with two selectors, and a path rule, is fine;
        // a regex segment may hold a space.
        let policy = Policy::compile(&json!({
            "POST /mcp": "a",
            "POST /mcp tools/call": "b",
            "POST /mcp tools/call x*": "c",
            "GET /{a b}/x tools/call": "d"
        }))
        .unwrap();
        assert_eq!(policy.rule_count(), 4);
    }

    #[test]
    fn policy_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Policy>();
        assert_send_sync::<PathSet>();
    }
}
