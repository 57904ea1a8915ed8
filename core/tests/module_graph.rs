//! The core's modules form no cycle. Each top-level module of `core/src` (a
//! file, or a folder such as `engine/` with everything in it) is a node; each
//! `crate::<module>` path in its code, in a `use` or inline, is an edge. A
//! cycle would mean that no module of it can be read, tested or changed
//! without the others, which is how thirteen modules once came to need each
//! other (`metrics` read the engine's state, the engine counted metrics).
//!
//! Test code (`#[cfg(test)]` items and the files of `#[cfg(test)]` modules)
//! is left out: a unit test may use what is above its module, as the tests of
//! `consumer.rs` compile a whole `Config` to check the field an error names.
//!
//! It reads the sources, so it runs natively only.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Punct(char),
    /// A string literal's text (for `#[path = "…"]`), or any other literal.
    Literal(String),
}

/// Rust source as identifiers, punctuation and literals: comments (doc
/// comments too) dropped, so a `crate::` in prose or in a string is no edge.
fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = at(i);
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && at(i) != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i >= chars.len() {
                    break;
                } else {
                    i += 1;
                }
            }
        } else if let Some((text, end)) = raw_string(&chars, i) {
            tokens.push(Token::Literal(text));
            i = end;
        } else if c == '"' || (c == 'b' && at(i + 1) == '"') {
            i += if c == 'b' { 2 } else { 1 };
            let mut text = String::new();
            while i < chars.len() && at(i) != '"' {
                if at(i) == '\\' {
                    text.push(at(i + 1));
                    i += 2;
                } else {
                    text.push(at(i));
                    i += 1;
                }
            }
            tokens.push(Token::Literal(text));
            i += 1;
        } else if c == '\'' || (c == 'b' && at(i + 1) == '\'') {
            let start = if c == 'b' { i + 1 } else { i };
            if at(start + 1) == '\\' {
                // An escaped character: up to the closing quote.
                i = start + 2;
                while i < chars.len() && at(i) != '\'' {
                    i += 1;
                }
                tokens.push(Token::Literal(String::new()));
                i += 1;
            } else if at(start + 2) == '\'' {
                tokens.push(Token::Literal(at(start + 1).to_string()));
                i = start + 3;
            } else {
                // A lifetime: its name follows as an identifier.
                tokens.push(Token::Punct('\''));
                i = start + 1;
            }
        } else if c == 'r' && at(i + 1) == '#' && is_ident(at(i + 2)) {
            // A raw identifier, r#type.
            i += 2;
            let start = i;
            while is_ident(at(i)) {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            let start = i;
            while is_ident(at(i)) {
                i += 1;
            }
            tokens.push(Token::Literal(chars[start..i].iter().collect()));
        } else if is_ident(c) {
            let start = i;
            while is_ident(at(i)) {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

/// A raw string (`r"…"`, `r#"…"#`, `br#"…"#`) starting at `i`: its text and
/// where it ends.
fn raw_string(chars: &[char], i: usize) -> Option<(String, usize)> {
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut j = i;
    if at(j) == 'b' {
        j += 1;
    }
    if at(j) != 'r' {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while at(j) == '#' {
        hashes += 1;
        j += 1;
    }
    if at(j) != '"' {
        return None;
    }
    j += 1;
    let start = j;
    loop {
        if j >= chars.len() {
            return Some((chars[start..].iter().collect(), j));
        }
        if at(j) == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
            return Some((chars[start..j].iter().collect(), j + 1 + hashes));
        }
        j += 1;
    }
}

fn ident(token: Option<&Token>) -> Option<&str> {
    match token {
        Some(Token::Ident(name)) => Some(name),
        _ => None,
    }
}

fn punct(token: Option<&Token>, c: char) -> bool {
    token == Some(&Token::Punct(c))
}

/// The length of the attribute `#[…]` or `#![…]` at `i`, if there is one.
fn attribute_len(tokens: &[Token], i: usize) -> Option<usize> {
    if !punct(tokens.get(i), '#') {
        return None;
    }
    let open = if punct(tokens.get(i + 1), '!') {
        i + 2
    } else {
        i + 1
    };
    if !punct(tokens.get(open), '[') {
        return None;
    }
    let mut depth = 0;
    for (j, token) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Punct('[') => depth += 1,
            Token::Punct(']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(j + 1 - i);
                }
            }
            _ => {}
        }
    }
    None
}

fn is_cfg_test(attribute: &[Token]) -> bool {
    let inner: Vec<&Token> = attribute
        .iter()
        .filter(|t| !matches!(t, Token::Punct('#' | '!' | '[' | ']')))
        .collect();
    inner
        == [
            &Token::Ident("cfg".into()),
            &Token::Punct('('),
            &Token::Ident("test".into()),
            &Token::Punct(')'),
        ]
}

/// Past the visibility (`pub`, `pub(crate)`) at `i`, if any.
fn after_visibility(tokens: &[Token], mut i: usize) -> usize {
    if ident(tokens.get(i)) == Some("pub") {
        i += 1;
        if punct(tokens.get(i), '(') {
            while i < tokens.len() && !punct(tokens.get(i), ')') {
                i += 1;
            }
            i += 1;
        }
    }
    i
}

/// The end of the item (or field, or statement) starting at `i`: past its
/// closing `}` or its `;`, or, for what is not an item, its `,`.
fn item_end(tokens: &[Token], mut i: usize) -> usize {
    const ITEMS: [&str; 15] = [
        "fn",
        "mod",
        "impl",
        "use",
        "struct",
        "enum",
        "const",
        "static",
        "type",
        "trait",
        "macro_rules",
        "extern",
        "let",
        "unsafe",
        "async",
    ];
    let is_item =
        ident(tokens.get(after_visibility(tokens, i))).is_some_and(|name| ITEMS.contains(&name));
    let mut depth = 0usize;
    while let Some(token) = tokens.get(i) {
        match token {
            Token::Punct('{' | '(' | '[') => depth += 1,
            Token::Punct('}' | ')' | ']') => {
                if depth == 0 {
                    // The end of what encloses it: not its own.
                    return i;
                }
                depth -= 1;
                if depth == 0 && *token == Token::Punct('}') {
                    return i + 1;
                }
            }
            Token::Punct(';') if depth == 0 => return i + 1,
            Token::Punct(',') if depth == 0 && !is_item => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// A `mod name;` declared under `#[cfg(test)]`: its name and `#[path]`, if
/// any. Its file is test code.
type TestMod = (String, Option<String>);

/// A file's tokens without its `#[cfg(test)]` items, and the `mod`
/// declarations among those.
fn without_tests(tokens: &[Token]) -> (Vec<Token>, Vec<TestMod>) {
    let mut kept = Vec::new();
    let mut test_mods = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let Some(len) = attribute_len(tokens, i) else {
            kept.push(tokens[i].clone());
            i += 1;
            continue;
        };
        if !is_cfg_test(&tokens[i..i + len]) {
            kept.extend_from_slice(&tokens[i..i + len]);
            i += len;
            continue;
        }
        if punct(tokens.get(i + 1), '!') {
            // `#![cfg(test)]`: the whole file.
            return (Vec::new(), test_mods);
        }
        i += len;
        let mut path = None;
        while let Some(len) = attribute_len(tokens, i) {
            let attribute = &tokens[i..i + len];
            if ident(attribute.get(2)) == Some("path") {
                if let Some(Token::Literal(p)) = attribute.get(4) {
                    path = Some(p.clone());
                }
            }
            i += len;
        }
        let j = after_visibility(tokens, i);
        if ident(tokens.get(j)) == Some("mod") && punct(tokens.get(j + 2), ';') {
            if let Some(name) = ident(tokens.get(j + 1)) {
                test_mods.push((name.to_string(), path));
            }
        }
        i = item_end(tokens, i);
    }
    (kept, test_mods)
}

/// The first segment of every `crate::` path: `crate::a::B`, and each of
/// `crate::{a::B, c}`. A `$crate` (in a macro) names the crate it is
/// expanded in, not a module.
fn crate_paths(tokens: &[Token]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for i in 0..tokens.len() {
        let is_crate_path = ident(tokens.get(i)) == Some("crate")
            && punct(tokens.get(i + 1), ':')
            && punct(tokens.get(i + 2), ':')
            && !(i > 0 && punct(tokens.get(i - 1), '$'));
        if !is_crate_path {
            continue;
        }
        if let Some(name) = ident(tokens.get(i + 3)) {
            found.insert(name.to_string());
        } else if punct(tokens.get(i + 3), '{') {
            let mut depth = 0;
            let mut expect_name = true;
            for token in &tokens[i + 3..] {
                match token {
                    Token::Punct('{') => depth += 1,
                    Token::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Token::Punct(',') if depth == 1 => expect_name = true,
                    Token::Ident(name) if depth == 1 && expect_name => {
                        found.insert(name.clone());
                        expect_name = false;
                    }
                    _ if depth == 1 => expect_name = false,
                    _ => {}
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The top-level module a file belongs to (`engine` for `engine/uma.rs`);
/// `None` for `lib.rs`, the crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("a file under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(stem) => Some(stem.to_string()),
        None => Some(first.to_string()),
    }
}

/// Where the files of a `mod name;` declared in `file` are (a file, or a
/// folder whose files are all its).
fn declared_paths(file: &Path, name: &str, path: Option<&str>) -> Vec<PathBuf> {
    let dir = file.parent().expect("a file in a folder");
    if let Some(path) = path {
        return vec![dir.join(path)];
    }
    let owns_dir = matches!(
        file.file_name().and_then(|n| n.to_str()),
        Some("lib.rs" | "mod.rs")
    );
    let base = if owns_dir {
        dir.to_path_buf()
    } else {
        dir.join(file.file_stem().expect("a file name"))
    };
    vec![base.join(format!("{name}.rs")), base.join(name)]
}

struct Graph {
    /// Every top-level module of non-test code.
    modules: BTreeSet<String>,
    /// module -> module it names -> the first file that names it.
    edges: BTreeMap<String, BTreeMap<String, PathBuf>>,
    /// `crate::` paths whose first segment is no module.
    unknown: BTreeSet<(String, PathBuf)>,
}

fn core_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let parsed: Vec<(PathBuf, Vec<Token>, Vec<TestMod>)> = files
        .into_iter()
        .map(|file| {
            let source = fs::read_to_string(&file).expect("readable source");
            let (tokens, test_mods) = without_tests(&tokenize(&source));
            (file, tokens, test_mods)
        })
        .collect();
    let test_paths: Vec<PathBuf> = parsed
        .iter()
        .flat_map(|(file, _, test_mods)| {
            test_mods
                .iter()
                .flat_map(|(name, path)| declared_paths(file, name, path.as_deref()))
        })
        .collect();
    let is_test_code = |file: &Path| test_paths.iter().any(|p| file.starts_with(p));
    let mut graph = Graph {
        modules: BTreeSet::new(),
        edges: BTreeMap::new(),
        unknown: BTreeSet::new(),
    };
    for (file, _, _) in &parsed {
        if let Some(module) = module_of(&src, file).filter(|_| !is_test_code(file)) {
            graph.modules.insert(module);
        }
    }
    for (file, tokens, _) in &parsed {
        if is_test_code(file) {
            continue;
        }
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        for to in crate_paths(tokens) {
            if to == from {
                continue;
            }
            if graph.modules.contains(&to) {
                graph
                    .edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| file.strip_prefix(&src).unwrap_or(file).to_path_buf());
            } else {
                graph.unknown.insert((to, file.clone()));
            }
        }
    }
    graph
}

/// A cycle, as the modules along it (the first repeated at the end), if the
/// graph has one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut done, &mut Vec::new()))
}

#[test]
fn the_core_modules_form_no_cycle() {
    let graph = core_graph();
    assert!(
        graph.unknown.is_empty(),
        "crate:: paths that name no module of core/src: {:?}",
        graph.unknown
    );
    // Not vacuous: the sources were read and their edges found.
    let count: usize = graph.edges.values().map(BTreeMap::len).sum();
    assert!(count > 50, "only {count} edges found");
    for (from, to) in [
        ("engine", "config"),
        ("engine", "metrics"),
        ("config", "policy"),
        ("keys", "issuer"),
        ("jwt", "issuer"),
    ] {
        assert!(
            graph.edges.get(from).is_some_and(|e| e.contains_key(to)),
            "{from} -> {to} not found"
        );
    }
    assert!(
        !graph.modules.contains("robustness"),
        "a #[cfg(test)] module's file counted as code"
    );
    let names: BTreeMap<String, BTreeSet<String>> = graph
        .edges
        .iter()
        .map(|(from, to)| (from.clone(), to.keys().cloned().collect()))
        .collect();
    if let Some(cycle) = find_cycle(&names) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|pair| {
                let file = &graph.edges[&pair[0]][&pair[1]];
                format!("{} -> {} (in {})", pair[0], pair[1], file.display())
            })
            .collect();
        panic!(
            "the core's modules form a cycle: {}\n  {}",
            cycle.join(" -> "),
            steps.join("\n  ")
        );
    }
}

#[test]
fn crate_paths_are_read_from_code_not_from_comments_strings_or_tests() {
    let source = r####"
        //! A doc comment naming crate::doc_comment.
        use crate::a::X;
        use crate::{b, c::{D, E}};
        pub(crate) fn f<'a>(s: &'a str) -> char {
            /* crate::block_comment, /* nested crate::nested */ */
            let _ = "crate::string \" crate::escaped";
            let _ = r#"crate::raw "string""#;
            let _ = b"crate::bytes";
            let _ = $crate::macro_path::x();
            crate::d::call();
            '"'
        }
        #[cfg(test)]
        mod tests {
            use crate::test_only::X;
        }
        #[cfg(test)]
        pub fn helper<A, B>() { crate::test_helper::x(); }
        #[cfg(test)]
        #[path = "other_tests.rs"]
        mod other;
        struct S {
            #[cfg(test)]
            field: crate::test_field::T,
            kept: crate::e::T,
        }
    "####;
    let (tokens, test_mods) = without_tests(&tokenize(source));
    let found: Vec<String> = crate_paths(&tokens).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "e"]);
    assert_eq!(
        test_mods,
        [("other".to_string(), Some("other_tests.rs".to_string()))]
    );
}

#[test]
fn a_cycle_is_named_module_by_module() {
    let graph = |edges: &[(&str, &str)]| {
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            map.entry(from.to_string())
                .or_default()
                .insert(to.to_string());
        }
        map
    };
    assert_eq!(
        find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        find_cycle(&graph(&[("a", "b"), ("a", "c"), ("b", "c")])),
        None
    );
}
