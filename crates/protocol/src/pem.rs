//! PEM (RFC 7468) for key material: one block, strict labels, standard base64.

/// A PEM document that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed PEM")]
pub struct PemError;

/// Maximum PEM input accepted (a 4096-bit private key is about 3.3 KiB).
const MAX_PEM_LEN: usize = 16 * 1024;

/// Decodes the first PEM block and returns its label and DER contents.
pub fn decode(text: &str) -> Result<(String, Vec<u8>), PemError> {
    if text.len() > MAX_PEM_LEN {
        return Err(PemError);
    }
    let mut lines = text.lines().map(str::trim).skip_while(|l| l.is_empty());
    let begin = lines.next().ok_or(PemError)?;
    let label = begin.strip_prefix("-----BEGIN ").and_then(|rest| rest.strip_suffix("-----")).ok_or(PemError)?;
    let end = format!("-----END {label}-----");
    let mut body = String::with_capacity(text.len());
    for line in lines.by_ref() {
        if line == end {
            let der = crate::b64::decode_standard(&body).map_err(|_| PemError)?;
            if der.is_empty() {
                return Err(PemError);
            }
            return Ok((label.to_owned(), der));
        }
        if line.contains(':') || line.starts_with("-----") {
            return Err(PemError);
        }
        body.push_str(line);
    }
    Err(PemError)
}

/// Encodes DER as a PEM block with 64-column lines.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = crate::b64::encode_standard(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let der = (0u8..=200).collect::<Vec<_>>();
        let pem = encode("PUBLIC KEY", &der);
        assert_eq!(decode(&pem).unwrap(), ("PUBLIC KEY".to_owned(), der));
    }

    #[test]
    fn rejects_mismatched_end_and_headers() {
        assert_eq!(decode("-----BEGIN A-----\nAAAA\n-----END B-----\n"), Err(PemError));
        assert_eq!(decode("-----BEGIN A-----\nProc-Type: 4\nAAAA\n-----END A-----\n"), Err(PemError));
        assert_eq!(decode("-----BEGIN A-----\n-----END A-----\n"), Err(PemError));
    }
}
