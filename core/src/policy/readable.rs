//! The readable scope expressions, e.g. `read and (fido or otp)`, compiled
//! into a [`Check`]; the condition's scope list is collected from the text.

use super::expr::{Check, Expr, Lit, MAX_DEPTH};
use super::scope::{Captures, Scope};
use super::PolicyError;

impl Check {
    /// The readable form, e.g. `read and (fido or otp)`.
    pub(crate) fn from_readable(
        text: &str,
        captures: Captures,
        name: &str,
    ) -> Result<Check, PolicyError> {
        let mut parser = Parser {
            tokens: tokenize(text),
            pos: 0,
            scopes: Vec::new(),
            text,
            name,
        };
        let expr = parser.expression()?;
        let scopes = parser
            .scopes
            .iter()
            .map(|s| Scope::compile(s, captures, name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Check::new(expr, scopes))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Token<'t> {
    Open,
    Close,
    Word(&'t str),
}

fn tokenize(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while let Some(c) = rest.chars().next() {
        let len = match c {
            '(' | ')' => c.len_utf8(),
            // A regex scope may contain parentheses: it runs to the next space.
            '^' => rest.find(char::is_whitespace).unwrap_or(rest.len()),
            _ => rest
                .find(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .unwrap_or(rest.len()),
        };
        let word = rest.get(..len).unwrap_or_default();
        tokens.push(match word {
            "(" => Token::Open,
            ")" => Token::Close,
            w => Token::Word(w),
        });
        rest = rest.get(len..).unwrap_or_default().trim_start();
    }
    tokens
}

fn is_keyword(word: &str) -> bool {
    matches!(word, "and" | "or" | "not" | "true" | "false")
}

/// Precedence: `not` binds tighter than `and`, which binds tighter than `or`.
struct Parser<'t> {
    tokens: Vec<Token<'t>>,
    pos: usize,
    scopes: Vec<String>,
    text: &'t str,
    name: &'t str,
}

impl<'t> Parser<'t> {
    fn error(&self, problem: String) -> PolicyError {
        PolicyError::BadExpression {
            rule: self.name.to_string(),
            expression: self.text.to_string(),
            problem,
        }
    }

    fn peek(&self) -> Option<Token<'t>> {
        self.tokens.get(self.pos).copied()
    }

    fn expression(&mut self) -> Result<Expr, PolicyError> {
        if self.tokens.is_empty() {
            return Err(self.error("empty expression".to_string()));
        }
        let expr = self.or(0)?;
        match self.peek() {
            None => Ok(expr),
            Some(Token::Close) => Err(self.error("unbalanced `)`".to_string())),
            Some(Token::Open) => Err(self.error("missing `and`/`or` before `(`".to_string())),
            Some(Token::Word(w)) => Err(self.error(format!(
                "missing `and`/`or` before `{w}` (operators are lower-case)"
            ))),
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, PolicyError> {
        let mut items = vec![self.and(depth)?];
        while self.peek() == Some(Token::Word("or")) {
            self.pos += 1;
            items.push(self.and(depth)?);
        }
        Ok(match items.pop() {
            Some(only) if items.is_empty() => only,
            Some(last) => {
                items.push(last);
                Expr::Or(items)
            }
            None => Expr::Or(items),
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, PolicyError> {
        let mut items = vec![self.unary(depth)?];
        while self.peek() == Some(Token::Word("and")) {
            self.pos += 1;
            items.push(self.unary(depth)?);
        }
        Ok(match items.pop() {
            Some(only) if items.is_empty() => only,
            Some(last) => {
                items.push(last);
                Expr::And(items)
            }
            None => Expr::And(items),
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, PolicyError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply".to_string()));
        }
        let previous = self
            .pos
            .checked_sub(1)
            .and_then(|p| self.tokens.get(p))
            .copied();
        let token = self.peek();
        self.pos += 1;
        match token {
            None => Err(self.error(match previous {
                Some(Token::Word(op)) => format!("dangling operator `{op}` at the end"),
                _ => "unbalanced `(`".to_string(),
            })),
            Some(Token::Word("not")) => Ok(Expr::Not(Box::new(self.unary(depth + 1)?))),
            Some(Token::Word("true")) => Ok(Expr::Lit(Lit::Bool(true))),
            Some(Token::Word("false")) => Ok(Expr::Lit(Lit::Bool(false))),
            Some(Token::Word(op @ ("and" | "or"))) => {
                Err(self.error(format!("operator `{op}` is missing its left operand")))
            }
            Some(Token::Open) => {
                let inner = self.or(depth + 1)?;
                if self.peek() == Some(Token::Close) {
                    self.pos += 1;
                    Ok(inner)
                } else {
                    Err(self.error("unbalanced `(`".to_string()))
                }
            }
            Some(Token::Close) => Err(self.error(match previous {
                Some(Token::Open) => "empty `()`".to_string(),
                Some(Token::Word(op)) if is_keyword(op) => {
                    format!("dangling operator `{op}` before `)`")
                }
                _ => "unbalanced `)`".to_string(),
            })),
            Some(Token::Word(scope)) => {
                let index = match self.scopes.iter().position(|s| s == scope) {
                    Some(i) => i,
                    None => {
                        self.scopes.push(scope.to_string());
                        self.scopes.len() - 1
                    }
                };
                Ok(Expr::Var(index))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::policy::expr::tests::strings;
    use crate::policy::scope::Captures;

    #[test]
    fn readable_parsing() {
        // (text, expected expression, collected scopes)
        let v = |i| Expr::Var(i);
        let cases: Vec<(&str, Expr, &[&str])> = vec![
            ("read", v(0), &["read"]),
            (
                "read and write",
                Expr::And(vec![v(0), v(1)]),
                &["read", "write"],
            ),
            (
                "a or b and c",
                Expr::Or(vec![v(0), Expr::And(vec![v(1), v(2)])]),
                &["a", "b", "c"],
            ),
            (
                "(a or b) and c",
                Expr::And(vec![Expr::Or(vec![v(0), v(1)]), v(2)]),
                &["a", "b", "c"],
            ),
            (
                "READ and (FIDO or OTP)",
                Expr::And(vec![v(0), Expr::Or(vec![v(1), v(2)])]),
                &["READ", "FIDO", "OTP"],
            ),
            (
                "not a and b",
                Expr::And(vec![Expr::Not(Box::new(v(0))), v(1)]),
                &["a", "b"],
            ),
            (
                "not not a",
                Expr::Not(Box::new(Expr::Not(Box::new(v(0))))),
                &["a"],
            ),
            ("a or a", Expr::Or(vec![v(0), v(0)]), &["a"]),
            ("true", Expr::Lit(Lit::Bool(true)), &[]),
            ("  false  ", Expr::Lit(Lit::Bool(false)), &[]),
            ("(read)", v(0), &["read"]),
            (
                "x:y/z and a.b",
                Expr::And(vec![v(0), v(1)]),
                &["x:y/z", "a.b"],
            ),
            ("(a)or(b)", Expr::Or(vec![v(0), v(1)]), &["a", "b"]),
            (
                "^transactions:(?<PC1>[0-9]+)$ or admin",
                Expr::Or(vec![v(0), v(1)]),
                &["^transactions:(?<PC1>[0-9]+)$", "admin"],
            ),
            ("(^a(b)c )", v(0), &["^a(b)c"]),
        ];
        for (text, want, scopes) in cases {
            let mut p = Parser {
                tokens: tokenize(text),
                pos: 0,
                scopes: Vec::new(),
                text,
                name: "r",
            };
            assert_eq!(p.expression().unwrap(), want, "{text}");
            assert_eq!(p.scopes, strings(scopes), "{text}");
        }
    }

    #[test]
    fn readable_errors() {
        // (text, fragment of the problem)
        let cases: &[(&str, &str)] = &[
            ("", "empty expression"),
            ("   ", "empty expression"),
            ("(a and b", "unbalanced `(`"),
            ("a and b)", "unbalanced `)`"),
            ("a and", "dangling operator `and`"),
            ("a or", "dangling operator `or`"),
            ("not", "dangling operator `not`"),
            ("and a", "missing its left operand"),
            ("a or or b", "missing its left operand"),
            ("(a and) or b", "dangling operator `and` before `)`"),
            ("()", "empty `()`"),
            ("a b", "missing `and`/`or` before `b`"),
            ("read AND write", "missing `and`/`or` before `AND`"),
            ("a (b)", "missing `and`/`or` before `(`"),
            (")", "unbalanced `)`"),
            ("((a)", "unbalanced `(`"),
        ];
        for (text, fragment) in cases {
            let err = Check::from_readable(text, Captures::up_to(0), "GET /r").unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, PolicyError::BadExpression { .. }) && message.contains(fragment),
                "{text:?}: {message}"
            );
            assert!(message.contains("GET /r"), "{message}");
        }
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(Check::from_readable(&deep, Captures::up_to(0), "r")
            .unwrap_err()
            .to_string()
            .contains("nested too deeply"));
    }
}
