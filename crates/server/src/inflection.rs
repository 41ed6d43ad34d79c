//! Persona's `Key-Inflection`: request keys may be kebab-, camel- or
//! snake-case; responses are kebab unless the header asks otherwise.

/// A response key style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Inflection {
    /// `blind-sig` (the default).
    #[default]
    Kebab,
    /// `blindSig`.
    Camel,
    /// `blind_sig`.
    Snake,
}

impl Inflection {
    /// Parses a `Key-Inflection` header value.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "kebab" => Some(Self::Kebab),
            "camel" => Some(Self::Camel),
            "snake" => Some(Self::Snake),
            _ => None,
        }
    }

    /// Converts a kebab-case key to this style.
    pub fn apply(self, kebab: &str) -> String {
        match self {
            Self::Kebab => kebab.to_owned(),
            Self::Snake => kebab.replace('-', "_"),
            Self::Camel => {
                let mut out = String::with_capacity(kebab.len());
                let mut upper = false;
                for c in kebab.chars() {
                    if c == '-' {
                        upper = true;
                    } else if upper {
                        out.extend(c.to_uppercase());
                        upper = false;
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }
}

/// Normalises a request key in any of the three styles to kebab-case:
/// `blindedToken`, `blinded_token` and `blinded-token` all give
/// `blinded-token`.
pub fn to_kebab(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        match c {
            '_' => out.push('-'),
            c if c.is_ascii_uppercase() => {
                out.push('-');
                out.push(c.to_ascii_lowercase());
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keys_normalise() {
        for k in ["blindedToken", "blinded_token", "blinded-token"] {
            assert_eq!(to_kebab(k), "blinded-token");
        }
        assert_eq!(to_kebab("keyId"), "key-id");
    }

    #[test]
    fn response_keys_inflect() {
        assert_eq!(Inflection::Camel.apply("blind-sig"), "blindSig");
        assert_eq!(Inflection::Snake.apply("blind-sig"), "blind_sig");
        assert_eq!(Inflection::Kebab.apply("blind-sig"), "blind-sig");
        assert_eq!(Inflection::parse("camel"), Some(Inflection::Camel));
        assert_eq!(Inflection::parse("pascal"), None);
    }
}
