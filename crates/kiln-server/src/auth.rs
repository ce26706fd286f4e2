//! Bearer tokens and their scopes.
//!
//! Tokens come from a file (`kiln serve --tokens FILE`) or the environment
//! (`KILN_SERVER_TOKENS`), in one format: a token per line, `SCOPE TOKEN [NAME]`, blank lines
//! and `#` comments ignored. The scopes nest: `read` lists and downloads, `write` also uploads
//! and submits, `admin` also deletes. NAME (by default `token-N`, N its line) is who the
//! server says did what ("uploaded by"). Without tokens every caller is `anonymous` with every
//! scope, which is why such a server only listens on loopback ([`check_listen`]).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode, header};

use crate::problem::Problem;

/// What a token lets its holder do; each scope includes those before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// List, show, download, follow.
    Read,
    /// Also upload components and blobs, submit and cancel runs, move tags.
    Write,
    /// Also delete component versions.
    Admin,
}

impl Scope {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Its name in token files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// Who made a request, as far as its token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`anonymous` without tokens).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

/// The tokens a server accepts, kept as blake3 hashes (the tokens themselves are not kept).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Caller>,
}

impl Tokens {
    /// No tokens: every caller may do everything (loopback only).
    pub fn none() -> Self {
        Self::default()
    }

    /// Tokens from the text of a token file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        let mut names = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(scope), Some(token)) = (words.next(), words.next()) else {
                return Err(format!(
                    "{origin}:{line_no}: write `SCOPE TOKEN [NAME]` (SCOPE is read, write or admin)"
                ));
            };
            let scope = Scope::parse(scope).ok_or_else(|| {
                format!("{origin}:{line_no}: unknown scope `{scope}`: use read, write or admin")
            })?;
            if token.len() < 16 {
                return Err(format!(
                    "{origin}:{line_no}: the token is {} characters long; use at least 16",
                    token.len()
                ));
            }
            let name = words
                .next()
                .map_or_else(|| format!("token-{line_no}"), str::to_owned);
            if let Some(extra) = words.next() {
                return Err(format!(
                    "{origin}:{line_no}: unexpected `{extra}` after the name"
                ));
            }
            if let Some(first) = names.insert(name.clone(), line_no) {
                return Err(format!(
                    "{origin}:{line_no}: the name `{name}` is already used on line {first}"
                ));
            }
            let hash = *blake3::hash(token.as_bytes()).as_bytes();
            if by_hash.insert(hash, Caller { name, scope }).is_some() {
                return Err(format!(
                    "{origin}:{line_no}: this token is already given on an earlier line"
                ));
            }
        }
        if by_hash.is_empty() {
            return Err(format!(
                "{origin}: no tokens (write `SCOPE TOKEN [NAME]` lines)"
            ));
        }
        Ok(Self { by_hash })
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// The caller of a request that needs `needed`, or the problem to answer with:
    /// `unauthorized` (401) without a known token, `forbidden` (403) with too small a scope.
    pub fn authorize(&self, headers: &HeaderMap, needed: Scope) -> Result<Caller, Problem> {
        if self.by_hash.is_empty() {
            return Ok(Caller {
                name: "anonymous".to_owned(),
                scope: Scope::Admin,
            });
        }
        let unauthorized = |detail: &str| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                detail,
            )
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("this server needs a bearer token (KILN_TOKEN)"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("write the header as `Authorization: Bearer TOKEN`"))?;
        let caller = self
            .by_hash
            .get(blake3::hash(token.trim().as_bytes()).as_bytes())
            .ok_or_else(|| unauthorized("the server does not know this token"))?;
        if caller.scope < needed {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!(
                    "the token `{}` has the {} scope; this needs {}",
                    caller.name,
                    caller.scope.name(),
                    needed.name()
                ),
            ));
        }
        Ok(caller.clone())
    }
}

/// Refuses to listen beyond loopback without tokens: anyone who reached such a server could
/// upload and run what they like.
pub fn check_listen(addr: &SocketAddr, tokens: &Tokens) -> Result<(), String> {
    if tokens.is_empty() && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {addr} without tokens: anyone who can reach it could upload \
             and run components; give --tokens FILE (or KILN_SERVER_TOKENS), or listen on \
             127.0.0.1"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn scopes_nest_and_unknown_tokens_are_refused() {
        let tokens = Tokens::parse(
            "# team tokens\nread reader-token-0123456789 ci\n\nadmin admin-token-0123456789\n",
            "tokens",
        )
        .unwrap();
        assert_eq!(tokens.len(), 2);
        let reader = tokens
            .authorize(&bearer("reader-token-0123456789"), Scope::Read)
            .unwrap();
        assert_eq!(reader.name, "ci");
        let refused = tokens
            .authorize(&bearer("reader-token-0123456789"), Scope::Write)
            .unwrap_err();
        assert_eq!((refused.status, refused.code), (403, "forbidden"));
        let admin = tokens
            .authorize(&bearer("admin-token-0123456789"), Scope::Write)
            .unwrap();
        assert_eq!(admin.name, "token-4");
        for headers in [bearer("admin-token-012345678"), HeaderMap::new()] {
            let refused = tokens.authorize(&headers, Scope::Read).unwrap_err();
            assert_eq!((refused.status, refused.code), (401, "unauthorized"));
        }
    }

    #[test]
    fn token_files_are_checked() {
        for (text, message) in [
            ("", "tokens: no tokens"),
            ("root abcdefghijklmnopq", "tokens:1: unknown scope `root`"),
            ("read short", "tokens:1: the token is 5 characters long"),
            ("read", "tokens:1: write `SCOPE TOKEN [NAME]`"),
            (
                "read abcdefghijklmnopq a\nwrite bcdefghijklmnopqr a",
                "tokens:2: the name `a` is already used on line 1",
            ),
            (
                "read abcdefghijklmnopq\nwrite abcdefghijklmnopq",
                "tokens:2: this token is already given",
            ),
        ] {
            let error = Tokens::parse(text, "tokens").unwrap_err();
            assert!(error.starts_with(message), "{text:?}: {error}");
        }
    }

    #[test]
    fn without_tokens_only_loopback() {
        let none = Tokens::none();
        assert!(check_listen(&"127.0.0.1:8600".parse().unwrap(), &none).is_ok());
        assert!(check_listen(&"[::1]:8600".parse().unwrap(), &none).is_ok());
        let error = check_listen(&"0.0.0.0:8600".parse().unwrap(), &none).unwrap_err();
        assert!(error.contains("without tokens"), "{error}");
        let some = Tokens::parse("read abcdefghijklmnopq", "t").unwrap();
        assert!(check_listen(&"0.0.0.0:8600".parse().unwrap(), &some).is_ok());
    }
}
