//! The `PrivateToken` HTTP authentication scheme (RFC 9577 §2).
//!
//! Building is strict (quoted-strings, padded base64url). Parsing is tolerant
//! as RFC 9577 and RFC 9110 §11 require: case-insensitive scheme and
//! parameter names, quoted or unquoted values (including unquoted `=`
//! padding, as privacypass-ts emits), several challenges in one header mixed
//! with other schemes, missing spaces after commas, and unknown parameters,
//! which are ignored.

use crate::b64;
use crate::wire::TokenChallenge;

/// The scheme name.
pub const SCHEME: &str = "PrivateToken";

/// A header value that could not be parsed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not a list of `scheme [params]` challenges/credentials.
    #[error("malformed authentication header")]
    Malformed,
    /// No `PrivateToken` element carrying the required parameter.
    #[error("no PrivateToken {0} parameter")]
    Missing(&'static str),
    /// The parameter is not base64url.
    #[error("PrivateToken {0} parameter is not base64url")]
    BadBase64(&'static str),
}

/// One `auth-scheme` with its parameters, names lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthElement {
    /// The scheme, lowercased (`privatetoken`, `basic`, …).
    pub scheme: String,
    /// `(name, value)` pairs in order, names lowercased, values unquoted.
    pub params: Vec<(String, String)>,
}

impl AuthElement {
    /// The first value of parameter `name` (lowercase).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A `PrivateToken` challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateTokenChallenge {
    /// The exact TokenChallenge bytes (hash these for `challenge_digest`).
    pub challenge_bytes: Vec<u8>,
    /// The decoded TokenChallenge.
    pub challenge: TokenChallenge,
    /// The `token-key` parameter, decoded, if present.
    pub token_key: Option<Vec<u8>>,
    /// The `max-age` parameter, if present.
    pub max_age: Option<u64>,
}

/// Builds one `PrivateToken challenge="…", token-key="…"[, max-age="…"]`
/// challenge with padded base64url in quoted-strings.
pub fn www_authenticate(challenge: &TokenChallenge, token_key: Option<&[u8]>, max_age: Option<u64>) -> String {
    let mut out = format!("{SCHEME} challenge=\"{}\"", b64::encode_padded(&challenge.encode()));
    if let Some(key) = token_key {
        out.push_str(&format!(", token-key=\"{}\"", b64::encode_padded(key)));
    }
    if let Some(age) = max_age {
        out.push_str(&format!(", max-age=\"{age}\""));
    }
    out
}

/// Builds `PrivateToken token="…"` for an `Authorization` header.
pub fn authorization(token: &[u8]) -> String {
    format!("{SCHEME} token=\"{}\"", b64::encode_padded(token))
}

/// Parses every `PrivateToken` challenge of a `WWW-Authenticate` value.
/// Challenges of other schemes, and `PrivateToken` challenges whose
/// `challenge` does not decode (greased or unknown types with another layout),
/// are skipped, as RFC 9577 §2.1.3 requires.
pub fn parse_www_authenticate(header: &str) -> Result<Vec<PrivateTokenChallenge>, HeaderError> {
    let elements = parse_elements(header)?;
    Ok(elements
        .iter()
        .filter(|e| e.scheme == "privatetoken")
        .filter_map(|e| {
            let challenge_bytes = b64::decode(e.param("challenge")?).ok()?;
            let challenge = TokenChallenge::decode(&challenge_bytes).ok()?;
            let token_key = match e.param("token-key") {
                Some(v) => Some(b64::decode(v).ok()?),
                None => None,
            };
            let max_age = match e.param("max-age") {
                Some(v) => Some(v.parse::<u64>().ok()?),
                None => None,
            };
            Some(PrivateTokenChallenge { challenge_bytes, challenge, token_key, max_age })
        })
        .collect())
}

/// Extracts the token bytes from an `Authorization: PrivateToken token=…`
/// value. Unknown parameters are ignored.
pub fn parse_authorization(header: &str) -> Result<Vec<u8>, HeaderError> {
    let elements = parse_elements(header)?;
    let value = elements
        .iter()
        .filter(|e| e.scheme == "privatetoken")
        .find_map(|e| e.param("token"))
        .ok_or(HeaderError::Missing("token"))?;
    b64::decode(value).map_err(|_| HeaderError::BadBase64("token"))
}

/// Parses a `#challenge` / `credentials` list (RFC 9110 §11) into elements.
pub fn parse_elements(header: &str) -> Result<Vec<AuthElement>, HeaderError> {
    let mut p = Parser { s: header.as_bytes(), pos: 0 };
    let mut out: Vec<AuthElement> = Vec::new();
    loop {
        p.skip_list_separators();
        if p.at_end() {
            break;
        }
        let scheme = p.token().ok_or(HeaderError::Malformed)?;
        let mut element = AuthElement { scheme: scheme.to_ascii_lowercase(), params: Vec::new() };
        loop {
            p.skip_ws();
            let checkpoint = p.pos;
            let Some(name) = p.token() else {
                // Not a parameter: either a separator or the end.
                p.pos = checkpoint;
                if p.at_end() || p.peek() == Some(b',') {
                    if p.peek() == Some(b',') {
                        p.pos += 1;
                        p.skip_ws();
                        // A following `name=` continues this element's
                        // parameters; a bare token starts a new element.
                        if p.looks_like_param() {
                            continue;
                        }
                    }
                    break;
                }
                return Err(HeaderError::Malformed);
            };
            p.skip_ws();
            if p.peek() != Some(b'=') {
                // A bare token: the next scheme (or a token68 we do not use).
                p.pos = checkpoint;
                if !element.params.is_empty() || p.peek_is_scheme_start() {
                    break;
                }
                return Err(HeaderError::Malformed);
            }
            p.pos += 1;
            p.skip_ws();
            let value = p.value().ok_or(HeaderError::Malformed)?;
            element.params.push((name.to_ascii_lowercase(), value));
        }
        out.push(element);
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        let bytes = self.s.get(start..self.pos)?;
        if bytes.is_empty() {
            return None;
        }
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    fn peek_is_scheme_start(&self) -> bool {
        self.peek().is_some_and(is_tchar)
    }

    /// True when the input at `pos` is `token BWS "="`.
    fn looks_like_param(&self) -> bool {
        let mut i = self.pos;
        let start = i;
        while self.s.get(i).copied().is_some_and(is_tchar) {
            i += 1;
        }
        if i == start {
            return false;
        }
        while matches!(self.s.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        self.s.get(i) == Some(&b'=')
    }

    /// A quoted-string, or (leniently) everything up to `,` or whitespace.
    fn value(&mut self) -> Option<String> {
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let mut out = Vec::new();
            loop {
                match self.peek()? {
                    b'"' => {
                        self.pos += 1;
                        return String::from_utf8(out).ok();
                    }
                    b'\\' => {
                        self.pos += 1;
                        out.push(self.peek()?);
                        self.pos += 1;
                    }
                    c => {
                        out.push(c);
                        self.pos += 1;
                    }
                }
            }
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| !matches!(c, b',' | b' ' | b'\t' | b'"')) {
            self.pos += 1;
        }
        String::from_utf8(self.s.get(start..self.pos)?.to_vec()).ok()
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mixed_schemes_and_odd_spacing() {
        let elements =
            parse_elements("Basic realm=\"x\",PrivateToken challenge=\"AAA=\",token-key=abc, Other").unwrap();
        assert_eq!(elements.len(), 3);
        assert_eq!(elements[0].scheme, "basic");
        assert_eq!(elements[1].param("challenge"), Some("AAA="));
        assert_eq!(elements[1].param("token-key"), Some("abc"));
        assert_eq!(elements[2].scheme, "other");
    }

    #[test]
    fn scheme_and_names_are_case_insensitive() {
        let token = parse_authorization("privatetoken TOKEN=\"AAE=\", extra=1").unwrap();
        assert_eq!(token, vec![0, 1]);
    }

    #[test]
    fn missing_token_is_an_error() {
        assert_eq!(parse_authorization("Bearer abc"), Err(HeaderError::Missing("token")));
        assert_eq!(parse_authorization("PrivateToken token=\"!!\""), Err(HeaderError::BadBase64("token")));
    }

    #[test]
    fn unterminated_quote_is_malformed() {
        assert_eq!(parse_elements("PrivateToken token=\"abc"), Err(HeaderError::Malformed));
    }

    #[test]
    fn build_then_parse() {
        let challenge = TokenChallenge::new(2, "issuer.example", &[], "origin.example").unwrap();
        let header = www_authenticate(&challenge, Some(&[1, 2, 3]), Some(10));
        let parsed = parse_www_authenticate(&header).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].challenge, challenge);
        assert_eq!(parsed[0].token_key.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(parsed[0].max_age, Some(10));
    }
}
