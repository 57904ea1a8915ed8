"""Gluu Gateway's documented policies through a real Envoy: regex-group path
captures (PC1, PC2, PC3), `??` and the two numberings, the JsonLogic operators
beyond and/or/not, and conditions without `data`. docs/policy.md has the rules;
core/src/policy/ has the table-driven tests taken from Gluu's docs and its t/.
"""

import pytest

from test_policy import config, launch, var  # noqa: F401 (launch is a fixture)

# Gluu's docs (plugin/common-features.md, "Scopes to URI mapping"), verbatim.
TODOS_PATH = "/todos/?/command/{^(\\d\\d\\d)-([a-d]{4})$}"
TODOS_DATA = ["^todos:(?<PC1>.+)$", "^command:(?<PC2>\\d\\d\\d)$", "^subcommand:(?<PC3>[a-d]{4})$",
              "^profile:.+$", "email"]
IMAGES_PATH = "/images/?/{(.+)\\.(jpg|png)}"

GLUU_DOCS = [
    {"path": TODOS_PATH, "conditions": [{"httpMethods": ["GET", "POST"],
                                         "scope_expression": {"rule": {"and": [var(0)]}, "data": TODOS_DATA}}]},
    # The same scopes with all three captures bound: PC3 is what was refused before.
    {"path": "/v2" + TODOS_PATH, "conditions": [{"httpMethods": ["GET"], "scope_expression": {
        "rule": {"and": [var(0), var(1), var(2)]}, "data": TODOS_DATA}}]},
    {"path": IMAGES_PATH, "conditions": [{"httpMethods": ["GET"], "scope_expression": {
        "rule": {"and": [var(0), {"or": [var(1), var(2)]}]},
        "data": ["^img:(?<PC1>.+)$", "^imgname:(?<PC2>.+)$", "^imgtype:(?<PC3>.+)$"]}}]},
    # JsonLogic beyond and/or: `in` over the scope booleans, `if`, `some` over `data`.
    {"path": "/logic/in", "conditions": [{"httpMethods": ["GET"], "scope_expression": {
        "rule": {"in": [True, [var(0), var(1)]]}, "data": ["read", "audit"]}}]},
    {"path": "/logic/if", "conditions": [{"httpMethods": ["GET"], "scope_expression": {
        "rule": {"if": [var(0), {"!": var(1)}, var(2)]}, "data": ["staff", "suspended", "guest"]}}]},
    {"path": "/logic/some", "conditions": [{"httpMethods": ["GET"], "scope_expression": {
        "rule": {"some": [{"var": ""}, {"==": [{"var": ""}, True]}]}, "data": ["a", "b", "c"]}}]},
    # No `data`: Gluu answered 500; this loads (with a warning) and allows any token.
    {"path": "/nodata", "conditions": [{"httpMethods": ["GET"], "scope_expression": {"rule": True}}]},
    # Gluu's docs, verbatim: a PC1 where `??` captures nothing. Gluu ran it and
    # never satisfied that scope; so here, with a warning naming the rule.
    {"path": "/posts/??", "conditions": [{"httpMethods": ["GET", "POST"], "scope_expression": {
        "rule": {"and": [var(0), {"or": [var(1), var(2)]}]},
        "data": ["admin", "^posts:(?<PC1>.+)$", "email"]}}]},
]


@pytest.fixture(scope="module")
def gluu(launch, authserver_module):
    return launch(config(authserver_module, policy=GLUU_DOCS))


def test_documented_regex_group_captures(gluu):
    todos = "GET,POST " + TODOS_PATH
    v2 = "GET /v2" + TODOS_PATH
    images = "GET " + IMAGES_PATH
    all3 = ["todos:hh", "command:123", "subcommand:abcd"]
    gluu.run_table([
        # Gluu's example: /todos/hh/command/123-abcd gives PC1=hh, PC2=123, PC3=abcd.
        ("GET", "/todos/hh/command/123-abcd", ["todos:hh"], 200),
        ("POST", "/todos/hh/command/123-abcd", ["todos:hh"], 200),
        ("GET", "/todos/hh/command/123-abcd", ["todos:zz"], 403, "insufficient_scope", todos, "todos:hh"),
        ("GET", "/v2/todos/hh/command/123-abcd", all3, 200),
        ("GET", "/v2/todos/hh/command/123-abcd", ["todos:hh", "command:123", "subcommand:abcc"],
         403, "insufficient_scope", v2, "todos:hh command:123 subcommand:abcd"),
        ("GET", "/v2/todos/hh/command/124-abcd", all3, 403, "insufficient_scope", v2,
         "todos:hh command:124 subcommand:abcd"),
        # anchored: Gluu's unanchored regex also took `1234-abcde`
        ("GET", "/todos/hh/command/1234-abcde", ["todos:hh"], 403, "forbidden"),
        # /images/?/{(.+)\.(jpg|png)}: PC1 folder, PC2 name, PC3 type
        ("GET", "/images/me/cat.png", ["img:me", "imgtype:png"], 200),
        ("GET", "/images/me/cat.png", ["img:me", "imgname:cat"], 200),
        ("GET", "/images/me/cat.png", ["img:me", "imgtype:jpg"], 403, "insufficient_scope", images,
         "img:me imgname:cat"),
        ("GET", "/images/you/cat.png", ["img:me", "imgname:cat"], 403, "insufficient_scope", images,
         "img:you imgname:cat"),
        ("GET", "/images/me/cat.gif", ["img:me", "imgtype:gif"], 403, "forbidden"),
    ])


def test_json_logic_in_if_some(gluu):
    gluu.run_table([
        ("GET", "/logic/in", ["audit"], 200),
        ("GET", "/logic/in", ["read", "audit"], 200),
        ("GET", "/logic/in", ["write"], 403, "insufficient_scope", "GET /logic/in", "read"),
        # staff and not suspended; otherwise guest
        ("GET", "/logic/if", ["staff"], 200),
        ("GET", "/logic/if", ["staff", "suspended", "guest"], 403, "insufficient_scope", "GET /logic/if", "staff"),
        ("GET", "/logic/if", ["guest"], 200),
        ("GET", "/logic/some", ["c"], 200),
        ("GET", "/logic/some", ["d"], 403, "insufficient_scope", "GET /logic/some", "a"),
    ])


def test_condition_without_data_loads_with_a_warning(gluu):
    gluu.check(gluu.req("GET", "/nodata", ["anything"]), "rule `true` without data", 200)
    log = gluu.env.log_text()
    assert "`scope_expression` has no `data`, so its rule `true` tests no scope and allows every valid token" \
        in log, log[-3000:]


def test_a_pc_group_on_double_wildcard_loads_as_gluu_ran_it(gluu):
    """Gluu's documented `/posts/??` example. Before: Envoy refused to start
    (``uses group `PC1` but the path has 0 capture(s) before its `??` ``)."""
    rule = "GET,POST /posts/??"
    gluu.run_table([
        ("GET", "/posts/1", ["admin", "email"], 200),
        ("POST", "/posts/1/comments", ["admin", "email"], 200),
        # the PC1 scope is never satisfied, whatever the token holds; the hint leaves it out
        ("GET", "/posts/1", ["admin", "posts:1"], 403, "insufficient_scope", rule, "admin email"),
        ("GET", "/posts/1/comments", ["admin", "posts:1/comments"], 403, "insufficient_scope", rule,
         "admin email"),
    ])
    log = gluu.env.log_text()
    assert "policy rule `%s`: scope `^posts:(?<PC1>.+)$` uses group `PC1`, but the path has 0 " \
        "capture(s) before its `??`" % rule in log, log[-3000:]
    assert "so the scope is never satisfied, as in Gluu Gateway" in log


# The readable form numbers `??` (what it consumed) and what follows it.
READABLE = {
    "GET /posts/??": "^posts:(?<PC1>.+)$",
    "GET /users/??/?": "^user:(?<PC2>.+)$",
}


@pytest.fixture(scope="module")
def readable(launch, authserver_module):
    return launch(config(authserver_module, policy=READABLE))


def test_readable_form_numbers_double_wildcard(readable):
    readable.run_table([
        ("GET", "/posts/1", ["posts:1"], 200),
        ("GET", "/posts/1/comments", ["posts:1/comments"], 200),
        ("GET", "/posts/1/comments", ["posts:1"], 403, "insufficient_scope", "GET /posts/??", "posts:1/comments"),
        ("GET", "/users/a/b/7", ["user:7"], 200),
        ("GET", "/users/7", ["user:8"], 403, "insufficient_scope", "GET /users/??/?", "user:7"),
    ])


def gluu_rule(path, rule, data=None):
    expr = {"rule": rule}
    if data is not None:
        expr["data"] = data
    return [{"path": path, "conditions": [{"httpMethods": ["GET"], "scope_expression": expr}]}]


REFUSED = [
    ("PC2 of one, Gluu format", gluu_rule("/posts/?", var(0), ["^posts:(?<PC2>.+)$"]), "GET /posts/?",
     "uses group `PC2` but the path has 1 capture(s)"),
    ("PC4 of three", gluu_rule(IMAGES_PATH, var(0), ["^t:(?<PC4>.+)$"]), "GET " + IMAGES_PATH,
     "uses group `PC4` but the path has 3 capture(s)"),
    ("arithmetic", gluu_rule("/x", {">=": [{"+": [var(0), var(1)]}, 2]}, ["a", "b"]), "GET /x",
     "JsonLogic operator `>=` is not supported: it does not apply to the scope booleans"),
    ("var without data", gluu_rule("/x", var(0)), "GET /x", "the condition has no `data`"),
    ("array as the rule", gluu_rule("/x", [var(0)], ["a"]), "GET /x", "a rule that is an array is always true"),
]


@pytest.mark.parametrize("policy,rule,problem", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_at_load_naming_the_rule(envoy_failure, authserver, policy, rule, problem):
    res = envoy_failure(config(authserver, policy=policy), timeout=20)
    assert not res.became_ready, (res, res.log[-3000:])
    lines = [line for line in res.log.splitlines() if "invalid configuration: `policy`" in line]
    assert lines, res.log[-3000:]
    assert "policy rule `%s`" % rule in lines[0] and problem in lines[0], lines[0]
